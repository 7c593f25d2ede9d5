// A global allocator needs `unsafe`; it only forwards to the system allocator and counts bytes.
#![allow(unsafe_code)]

//! Memory per open journey (profile included): `CXSTREAM_BENCH_PROFILES` customers (default
//! 1,000,000) each log in and open a checkout (3 events), then the heap is measured.
//!
//! `CXSTREAM_BENCH_UUID_IDS=1`: event, customer and anonymous ids are 36-character UUIDs
//! instead of short ids.
//!
//! `CXSTREAM_BENCH_SCENARIO=traffic`: instead, the simulator's mix of traffic for that many
//! customers, run until nine in ten have a profile (the engine benchmark's state): profiles
//! then also hold closed journeys and detector history, as a service's do after a while.
//!
//! Run: `cargo bench --bench memory`. Live heap bytes are counted by a wrapping global
//! allocator around mimalloc (the binary's allocator); resident set size (RSS) growth is
//! read from /proc for comparison.

use std::alloc::{GlobalAlloc, Layout};

use mimalloc::MiMalloc as System;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

struct Counting;
static LIVE: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call forwards unchanged to mimalloc (the binary's allocator), which upholds the GlobalAlloc contract.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size(), Relaxed);
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size(), Relaxed);
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        LIVE.fetch_add(new, Relaxed);
        LIVE.fetch_sub(l.size(), Relaxed);
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static A: Counting = Counting;

fn rss_bytes() -> usize {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .nth(1)
                .and_then(|p| p.parse::<usize>().ok())
        })
        .map_or(0, |pages| pages * 4096)
}

fn main() {
    let n: u64 = std::env::var("CXSTREAM_BENCH_PROFILES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let (heap0, rss0) = (LIVE.load(Relaxed), rss_bytes());
    let uuid_ids = std::env::var_os("CXSTREAM_BENCH_UUID_IDS").is_some_and(|v| v == "1");
    let traffic = std::env::var_os("CXSTREAM_BENCH_SCENARIO").is_some_and(|v| v == "traffic");
    let engine = if traffic {
        cxstream::sim::warmed(n).0
    } else {
        let engine = cxstream::sim::open_checkouts_with(n, false, uuid_ids);
        assert_eq!(engine.open_journeys() as u64, n);
        engine
    };
    let (profiles, open) = (engine.profile_count(), engine.open_journeys());
    let heap = LIVE.load(Relaxed) - heap0;
    let rss = rss_bytes().saturating_sub(rss0);
    let what = match (traffic, uuid_ids) {
        (true, _) => "the simulator's traffic",
        (false, true) => "one open checkout each, UUID ids",
        (false, false) => "one open checkout each, short ids",
    };
    println!("memory: {profiles} profiles, {open} open journeys ({what})");
    if traffic {
        println!(
            "memory: live heap {} bytes = {:.0} bytes per profile",
            heap,
            heap as f64 / profiles as f64
        );
        use std::mem::size_of;
        let c = engine.census();
        println!(
            "memory: made of {} profile slots x {} B, {} open x {} B, {} closed x {} B, \
             {} extras x {} B, {} histories x {} B with room for {:?} entries \
             (contacts, clicks, loose errors, cooldowns), {} index keys, {} dedup ids, \
             {} timers, {} buffered events",
            c.profile_slots,
            size_of::<Option<cxstream::profile::Profile>>(),
            c.open,
            size_of::<cxstream::journey::Instance>(),
            c.closed,
            size_of::<cxstream::profile::Closed>(),
            c.extras,
            size_of::<cxstream::profile::ProfileExtra>(),
            c.histories,
            size_of::<cxstream::profile::History>(),
            c.history_room,
            c.index_keys,
            c.dedup_ids,
            c.timers,
            c.buffered
        );
    }
    println!(
        "memory: live heap {} bytes = {:.0} bytes per open journey",
        heap,
        heap as f64 / open as f64
    );
    println!(
        "memory: RSS growth {} bytes = {:.0} bytes per open journey",
        rss,
        rss as f64 / open as f64
    );
    std::hint::black_box(&engine);
}
