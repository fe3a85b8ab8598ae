//! The aims judged from made-up results: every aim of the full plan measured and met at its
//! threshold, each one just past it, and a missing baseline.

use super::*;
use crate::bench::plan::ROWS;
use crate::bench::scale::Point;

fn load(rps: f64, p50_ms: f64, p99_ms: f64) -> Load {
    Load {
        rps,
        p50_ms,
        p99_ms,
        requests: 1000,
        ..Load::default()
    }
}

type Results = Vec<(RowSpec, RowResult)>;

/// Results of every row of the full plan, each aim exactly on its threshold.
fn on_the_line() -> (Plan, Results, Result<Scale>) {
    let plan = Plan::new(false);
    let results = ROWS
        .iter()
        .map(|spec| {
            // req/s, p50 ms, p99 ms, bulk MB/s, gateway CPU s per fixed-count run
            let (rps, p50, p99, bulk, cpu) = match spec.path {
                Route::Direct => (100_000.0, 0.080, 0.5, 7000.0, 0.0),
                Route::Nginx => (50_000.0, 0.100, 2.0, 1000.0, 1.0),
                Route::Rathole => (40_000.0, 0.100, 2.0, 900.0, 0.5),
                Route::Library(_) => (60_000.0, 0.125, 2.0, 2000.0, 1.0),
                Route::Proxy(_) => (48_000.0, 0.200, 3.0, 900.0, 1.0),
            };
            let mut r = RowResult::default();
            let protos: &[Proto] = if spec.h3 {
                &[Proto::H1, Proto::H2, Proto::H3]
            } else {
                &[Proto::H1, Proto::H2]
            };
            for &body in &plan.bodies {
                for &proto in protos {
                    for &c in &plan.concurrency {
                        r.loads.insert((body, proto, c), load(rps, p50, p99));
                    }
                }
            }
            if spec.cpu {
                for proto in [Proto::H1, Proto::H2] {
                    let mut l = load(rps, p50, p99);
                    l.requests = plan.cpu_requests;
                    l.cpu_gateway = cpu;
                    r.cpu.insert(proto, l);
                }
            }
            r.bulk_mb_s = Some(bulk);
            (*spec, r)
        })
        .collect();
    let scale = Scale {
        baseline_kib: 10_000,
        own_connections: 2,
        routed_alone: load(2000.0, 0.5, 0.7),
        points: plan
            .scale
            .iter()
            .map(|&n| Point {
                connections: n,
                rss_kib: 10_000 + 32 * n as u64,
                register_s: 1.0,
                routed: load(2000.0, 0.55, 0.7),
            })
            .collect(),
        restart_s: Some(1.0),
        restart_connections: plan.restart_connections,
    };
    (plan, results, Ok(scale))
}

fn row_mut(results: &mut Results, path: Route) -> &mut RowResult {
    &mut results.iter_mut().find(|(s, _)| s.is(path)).unwrap().1
}

/// The indices of the aims not met, and of those not measured.
fn misses(plan: &Plan, results: &Results, scale: &Result<Scale>) -> (Vec<usize>, Vec<usize>) {
    let aims = evaluate(plan, results, scale);
    let pick = |want: Option<bool>| {
        aims.iter()
            .enumerate()
            .filter(|(_, a)| a.met == want)
            .map(|(i, _)| i)
            .collect()
    };
    (pick(Some(false)), pick(None))
}

#[test]
fn the_full_plan_measures_every_aim_and_each_is_met_on_its_line() {
    let (plan, results, scale) = on_the_line();
    let aims = evaluate(&plan, &results, &scale);
    assert_eq!(aims.len(), 15, "{aims:#?}");
    for a in &aims {
        assert_eq!(a.met, Some(true), "{a:?}");
    }
    assert!(aims[0].this_run.contains("60000 vs 50000 req/s: 1.20×"));
    assert!(aims[11].this_run.contains("+45 µs"), "{:?}", aims[11]);
    assert!(
        aims[13]
            .aim
            .contains("up to 10000 idle origin connections of other hosts"),
        "{:?}",
        aims[13]
    );
}

#[test]
fn just_past_each_line_is_not_met() {
    let c = Plan::new(false).aim_c;
    type Nudge = fn(&mut Results, &mut Scale);
    let nudges: [(usize, Nudge); 8] = [
        (0, |r, _| {
            let n = row_mut(r, Route::Nginx);
            n.loads.get_mut(&("1k", Proto::H1, 64)).unwrap().rps = 50_001.0;
        }),
        (3, |r, _| {
            let l = row_mut(r, LIBRARY);
            l.loads.get_mut(&("1k", Proto::H2, 64)).unwrap().p99_ms = 2.001;
        }),
        (4, |r, _| {
            let n = row_mut(r, Route::Rathole);
            n.loads.get_mut(&("1k", Proto::H1, 64)).unwrap().rps = 40_001.0;
        }),
        (6, |r, _| row_mut(r, LIBRARY).bulk_mb_s = Some(1999.0)),
        (10, |r, _| {
            row_mut(r, PROXY)
                .cpu
                .get_mut(&Proto::H2)
                .unwrap()
                .cpu_gateway = 1.01;
        }),
        (11, |r, _| {
            let d = row_mut(r, Route::Direct);
            d.loads.get_mut(&("1k", Proto::H1, 1)).unwrap().p50_ms = 0.079;
        }),
        (13, |_, s| {
            s.points.last_mut().unwrap().routed.p50_ms = 0.551
        }),
        (14, |_, s| s.points.last_mut().unwrap().rss_kib += 10_000),
    ];
    assert_eq!(c, 64, "the nudges are written for 64 concurrent");
    for (aim, nudge) in nudges {
        let (plan, mut results, scale) = on_the_line();
        let mut scale = scale.unwrap();
        nudge(&mut results, &mut scale);
        assert_eq!(
            misses(&plan, &results, &Ok(scale)),
            (vec![aim], vec![]),
            "nudging aim {aim}"
        );
    }
}

#[test]
fn a_missing_baseline_leaves_its_aims_not_measured_and_says_why() {
    let (plan, mut results, scale) = on_the_line();
    let rathole = row_mut(&mut results, Route::Rathole);
    *rathole = RowResult {
        error: Some("not installed (--smoke does not build it)".into()),
        ..RowResult::default()
    };
    assert_eq!(misses(&plan, &results, &scale), (vec![], vec![4, 5]));
    let aims = evaluate(&plan, &results, &scale);
    assert!(aims[4].this_run.contains("not installed"), "{:?}", aims[4]);

    // A run in which no request succeeded measures nothing.
    let lib = row_mut(&mut results, LIBRARY);
    lib.loads.get_mut(&("1k", Proto::H1, 64)).unwrap().requests = 0;
    assert_eq!(misses(&plan, &results, &scale), (vec![], vec![0, 1, 4, 5]));

    let failed = Err(anyhow::anyhow!(
        "only 3 of 51 origin connections registered"
    ));
    assert_eq!(
        misses(&plan, &results, &failed),
        (vec![], vec![0, 1, 4, 5, 13, 14])
    );
}

#[test]
fn the_plans_read_their_aims_at_concurrencies_they_run() {
    for plan in [Plan::new(false), Plan::new(true)] {
        for c in plan.headline.iter().chain([&plan.aim_c, &plan.latency_c]) {
            assert!(plan.concurrency.contains(c), "{c} is not run: {plan:?}");
        }
    }
    let full = Plan::new(false);
    assert_eq!(full.headline, [1, 64, 256]);
    assert_eq!(
        (full.aim_c, full.latency_c, full.cpu_requests),
        (64, 1, 100_000)
    );
    for path in [Route::Nginx, LIBRARY, PROXY] {
        assert!(ROWS.iter().any(|s| s.is(path) && s.cpu), "{path:?}");
    }
}
