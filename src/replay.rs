//! Replay: run the engine over a recorded file of events (backtesting rules on real data).
//!
//! Input is JSON lines or length-delimited protobuf (a varint length before each message,
//! as protobuf's `writeDelimitedTo` writes). Bad records are rejected with their reason and
//! record number and never stop the run; a length prefix that cannot be read ends the run
//! with an error, since nothing after it can be framed.

use std::collections::BTreeMap;
use std::io::{self, BufRead, Read, Write};

use crate::alert::{AlertType, JourneyOutcome, Output};
use crate::decode::{decode, Format, RejectReason, MAX_EVENT_BYTES};
use crate::engine::{Engine, EngineStats, Ingest};

/// How many record numbers the report keeps per reject reason.
const EXAMPLES_PER_REASON: usize = 5;

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("reading input: {0}")]
    Read(#[source] io::Error),
    #[error("writing output: {0}")]
    Write(#[source] io::Error),
    #[error("record {record}: the length prefix is not a valid varint (is this length-delimited protobuf?)")]
    BadFrame { record: u64 },
}

/// Rejects of one reason: how many, and the first few record numbers with their details.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RejectSummary {
    pub count: u64,
    pub examples: Vec<(u64, String)>,
}

/// What a replay did.
#[derive(Debug, Clone, Default)]
pub struct ReplayReport {
    pub records: u64,
    pub rejected: BTreeMap<RejectReason, RejectSummary>,
    pub engine: EngineStats,
    pub alerts: BTreeMap<AlertType, u64>,
    pub journeys: BTreeMap<JourneyOutcome, u64>,
    pub summary_revisions: u64,
}

impl ReplayReport {
    pub fn rejected_total(&self) -> u64 {
        self.rejected.values().map(|r| r.count).sum()
    }
}

impl std::fmt::Display for ReplayReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let e = &self.engine;
        writeln!(f, "records read:     {}", self.records)?;
        writeln!(f, "accepted:         {}", e.accepted)?;
        writeln!(
            f,
            "rejected:         {}",
            self.rejected_total() + e.unlinkable
        )?;
        for (reason, r) in &self.rejected {
            let at: Vec<_> = r.examples.iter().map(|(n, _)| n.to_string()).collect();
            writeln!(
                f,
                "  {:<18} {:>8}  (records {})",
                reason.as_str(),
                r.count,
                at.join(", ")
            )?;
            if let Some((n, detail)) = r.examples.first() {
                writeln!(f, "    e.g. record {n}: {detail}")?;
            }
        }
        if e.unlinkable > 0 {
            writeln!(
                f,
                "  {:<18} {:>8}  (only never-link identifiers)",
                "unlinkable", e.unlinkable
            )?;
        }
        writeln!(f, "late:             {}", e.late)?;
        writeln!(f, "duplicates:       {}", e.duplicates)?;
        writeln!(
            f,
            "unknown channel:  {}   unknown action: {}",
            e.unknown_channel, e.unknown_action
        )?;
        writeln!(
            f,
            "profiles:         {} created, {} links, {} merges, {} expired",
            e.profiles_created, e.identity_links, e.identity_merges, e.profiles_expired
        )?;
        writeln!(
            f,
            "guardrails:       {} never-link, {} identifier cap, {} customer conflicts",
            e.guardrail_never_link, e.guardrail_identifier_cap, e.guardrail_customer_conflict
        )?;
        writeln!(f, "alerts:           {}", self.alerts.values().sum::<u64>())?;
        for (t, n) in &self.alerts {
            writeln!(f, "  {:<18} {:>8}", t.as_str(), n)?;
        }
        writeln!(f, "journeys started: {}", e.journeys_started)?;
        for (o, n) in &self.journeys {
            writeln!(f, "  {:<18} {:>8}", o.as_str(), n)?;
        }
        if self.summary_revisions > 0 {
            writeln!(
                f,
                "  {:<18} {:>8}  (summaries re-sent with a late survey)",
                "revised", self.summary_revisions
            )?;
        }
        Ok(())
    }
}

/// Where replay writes its outputs.
pub struct Sinks<'a> {
    pub alerts: &'a mut dyn Write,
    pub journeys: Option<&'a mut dyn Write>,
}

/// Reads one record: a line (JSON) or a length-delimited message (protobuf). `None` at end.
fn next_record(
    input: &mut dyn BufRead,
    format: Format,
    buf: &mut Vec<u8>,
    record: u64,
) -> Result<Option<Result<(), u64>>, ReplayError> {
    buf.clear();
    match format {
        Format::Protobuf => {
            let mut len: u64 = 0;
            for i in 0..10 {
                let mut b = [0u8; 1];
                match input.read(&mut b).map_err(ReplayError::Read)? {
                    0 if i == 0 => return Ok(None),
                    0 => return Err(ReplayError::BadFrame { record }),
                    _ => {}
                }
                len |= u64::from(b[0] & 0x7f) << (7 * i);
                if b[0] & 0x80 == 0 {
                    if len > (MAX_EVENT_BYTES as u64) * 16 {
                        // Skip it without keeping it in memory; the decoder reports the size.
                        io::copy(&mut Read::take(&mut *input, len), &mut io::sink())
                            .map_err(ReplayError::Read)?;
                        return Ok(Some(Err(len)));
                    }
                    buf.resize(len as usize, 0);
                    input
                        .read_exact(buf)
                        .map_err(|_| ReplayError::BadFrame { record })?;
                    return Ok(Some(Ok(())));
                }
            }
            Err(ReplayError::BadFrame { record })
        }
        _ => {
            let n = input.read_until(b'\n', buf).map_err(ReplayError::Read)?;
            if n == 0 {
                return Ok(None);
            }
            while buf.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                buf.pop();
            }
            Ok(Some(Ok(())))
        }
    }
}

/// Runs `engine` over `input`. At end of input the watermark moves past the last event
/// (everything buffered is applied); with `drain` every open journey is then closed.
/// `progress` is told how many bytes were consumed, now and then.
pub fn replay(
    engine: &mut Engine,
    input: &mut dyn BufRead,
    format: Format,
    sinks: Sinks<'_>,
    drain: bool,
    progress: &mut dyn FnMut(u64),
) -> Result<ReplayReport, ReplayError> {
    let mut report = ReplayReport::default();
    let mut buf = Vec::with_capacity(1024);
    let mut out = Vec::new();
    let mut consumed = 0u64;
    let Sinks {
        alerts,
        mut journeys,
    } = sinks;
    // One output's JSON line at a time.
    let mut line = Vec::with_capacity(1024);
    let json_line = |o: &Output, line: &mut Vec<u8>| {
        line.clear();
        o.write_json(line);
        line.push(b'\n');
    };
    let mut write = |out: &mut Vec<Output>, report: &mut ReplayReport| -> Result<(), ReplayError> {
        for o in out.drain(..) {
            match &o {
                Output::Alert(a) => {
                    *report.alerts.entry(a.alert_type).or_default() += 1;
                    json_line(&o, &mut line);
                    alerts.write_all(&line).map_err(ReplayError::Write)?;
                }
                Output::Journey(j) => {
                    if j.revision == 1 {
                        *report.journeys.entry(j.outcome).or_default() += 1;
                    } else {
                        report.summary_revisions += 1;
                    }
                    if let Some(w) = journeys.as_deref_mut() {
                        json_line(&o, &mut line);
                        w.write_all(&line).map_err(ReplayError::Write)?;
                    }
                }
            }
        }
        Ok(())
    };
    loop {
        let record = report.records + 1;
        let Some(framed) = next_record(input, format, &mut buf, record)? else {
            break;
        };
        if format != Format::Protobuf && buf.iter().all(u8::is_ascii_whitespace) {
            consumed += buf.len() as u64 + 1;
            continue; // blank lines are not records
        }
        report.records = record;
        consumed += buf.len() as u64 + 1;
        let decoded = match framed {
            Ok(()) => decode(&buf, format),
            Err(len) => Err(crate::decode::Reject::new(
                RejectReason::Oversized,
                format!("message is {len} bytes, the limit is {MAX_EVENT_BYTES}"),
            )),
        };
        match decoded {
            Ok(event) => {
                let _: Ingest = engine.ingest(event, &mut out);
                write(&mut out, &mut report)?;
            }
            Err(rej) => {
                let r = report.rejected.entry(rej.reason).or_default();
                r.count += 1;
                if r.examples.len() < EXAMPLES_PER_REASON {
                    r.examples.push((record, rej.detail));
                }
            }
        }
        if record % 4096 == 0 {
            progress(consumed);
        }
    }
    engine.flush(&mut out);
    if drain {
        engine.drain(&mut out);
    }
    write(&mut out, &mut report)?;
    progress(consumed);
    report.engine = engine.stats().clone();
    Ok(report)
}
