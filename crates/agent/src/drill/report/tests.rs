use super::*;
use crate::drill::fault::FaultRecord;

fn sample(unix_ms: u64, ok: bool) -> Sample {
    Sample {
        unix_ms,
        ok,
        latency_ms: 2,
        detail: if ok { "200".into() } else { "timeout".into() },
    }
}

fn event(seq: u64, unix_ms: u64, kind: EventKind) -> Event {
    Event {
        seq,
        unix_ms,
        kind,
        detail: "haproxy".into(),
    }
}

/// Fault at 10_000, failures from 10_100, converge saw it at 11_000 and
/// reloaded at 11_050, probes succeed from 11_100.
fn report() -> Report {
    Report {
        scenario: "backend-kill".into(),
        verdict: Verdict::Pass,
        reason: "recovered in 1100 ms, within the 5000 ms budget".into(),
        budget_ms: 5000,
        rto_ms: Some(1100),
        failure_observed: true,
        started_unix_ms: 9_000,
        fault_unix_ms: 10_000,
        probe: "GET http://127.0.0.1:8080/".into(),
        interval_ms: 100,
        settle: 3,
        fault: FaultRecord {
            fault: "SIGSTOP to pid 42".into(),
            undo: Some("SIGCONT to pid 42".into()),
            undo_result: Some("undone".into()),
        },
        baseline: vec![sample(9_800, true), sample(9_900, true)],
        samples: vec![
            sample(10_000, true),
            sample(10_100, false),
            sample(11_100, true),
            sample(11_200, true),
            sample(11_300, true),
        ],
        events: vec![
            event(7, 9_000, EventKind::Rendered),
            event(8, 11_000, EventKind::SawChange),
            event(9, 11_020, EventKind::Validated),
            event(10, 11_050, EventKind::Reloaded),
        ],
        events_error: None,
        recovered_by: None,
    }
}

#[test]
fn the_rto_splits_at_converge_seeing_and_applying_the_change() {
    assert_eq!(
        report().split(),
        Some(Split {
            before_converge_ms: 1000,
            converge_ms: 50,
            after_converge_ms: 50
        })
    );
    // The change went live just after the first probe of the recovered
    // run started: the last part is 0, the parts a little over the RTO.
    let mut late = report();
    late.events[3].unix_ms = 11_150;
    assert_eq!(
        late.split(),
        Some(Split {
            before_converge_ms: 1000,
            converge_ms: 150,
            after_converge_ms: 0
        })
    );
    // A pass that only held (an earlier trigger) is the fault's time.
    let mut held = report();
    held.events
        .insert(1, event(20, 10_050, EventKind::SawChange));
    held.events.insert(2, event(21, 10_060, EventKind::Held));
    assert_eq!(held.split(), report().split());
    let mut none = report();
    none.events.retain(|e| e.kind != EventKind::Reloaded);
    assert_eq!(
        none.split(),
        None,
        "nothing applied: the recovery was the fault's own"
    );
    let mut vip = report();
    vip.recovered_by = Some("keepalived".into());
    assert_eq!(
        vip.split(),
        None,
        "keepalived moved the VIP: converge's reload meanwhile is not why"
    );
    assert!(markdown(&vip).contains("Not split: keepalived recovers from this fault"));
}

#[test]
fn the_directory_holds_json_markdown_csv_and_svg_that_agree() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = write(dir.path(), &report()).expect("write");
    assert!(
        out.file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("backend-kill-1970")),
        "{}",
        out.display()
    );
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).expect("json"))
            .expect("parses");
    assert_eq!(json["report"]["verdict"], "PASS");
    assert_eq!(json["split"]["converge_ms"], 50);
    assert_eq!(json["report"]["events"][3]["kind"], "reloaded");

    let csv = std::fs::read_to_string(out.join("health-timeline.csv")).expect("csv");
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines[0], "unix_ms,t_ms,phase,ok,latency_ms,detail");
    assert_eq!(lines.len(), 1 + 2 + 5);
    assert_eq!(lines[4], "10100,100,after-fault,false,2,\"timeout\"");

    let md = std::fs::read_to_string(out.join("report.md")).expect("md");
    for want in [
        "# Drill `backend-kill`: PASS",
        "| RTO | 1100 ms |",
        "| 1000 |",
        "![timeline](timeline.svg)",
        "| +100 | probes fail (timeout) |",
        "| +1050 | converge reloaded: haproxy |",
        "| +1100 | recovered",
    ] {
        assert!(md.contains(want), "{want:?} missing:\n{md}");
    }
    let svg = std::fs::read_to_string(out.join("timeline.svg")).expect("svg");
    assert!(
        svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""),
        "{svg}"
    );
    assert!(svg.trim_end().ends_with("</svg>"));
    assert_eq!(
        svg.matches("fill=\"#c62828\"").count(),
        1,
        "one failed probe"
    );
    assert!(svg.contains(">recovered</text>") && svg.contains(">saw-change</text>"));

    // A second drill in the same second gets its own directory.
    let again = write(dir.path(), &report()).expect("write again");
    assert_ne!(again, out);
}
