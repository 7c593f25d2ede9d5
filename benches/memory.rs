// A global allocator needs `unsafe`; it only forwards to the system allocator and counts bytes.
#![allow(unsafe_code)]

//! Memory per open journey (profile included): `CXSTREAM_BENCH_PROFILES` customers (default
//! 1,000,000) each log in and open a checkout (3 events), then the heap is measured.
//!
//! `CXSTREAM_BENCH_UUID_IDS=1`: event, customer and anonymous ids are 36-character UUIDs
//! instead of short ids.
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
    let engine = cxstream::sim::open_checkouts_with(n, false, uuid_ids);
    let open = engine.open_journeys();
    assert_eq!(open as u64, n);
    let heap = LIVE.load(Relaxed) - heap0;
    let rss = rss_bytes().saturating_sub(rss0);
    let ids = if uuid_ids { "UUID" } else { "short" };
    println!("memory: {n} profiles, {open} open journeys, {ids} ids");
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
