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

impl Load {
    fn with_requests(mut self, requests: u64) -> Self {
        self.requests = requests;
        self
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

#[test]
fn the_aims_read_the_median_of_the_process_pairs() {
    let key = ("1k", Proto::H1, 64);
    // The row's own pair on the line (60 000 against nginx's 50 000): one slow pair beside
    // it does not move the median; two do.
    for (others, met) in [
        ([30_000.0, 61_000.0], true),
        ([30_000.0, 59_000.0], false),
        ([61_000.0, 62_000.0], true),
    ] {
        let (plan, mut results, scale) = on_the_line();
        let lib = row_mut(&mut results, LIBRARY);
        lib.again
            .insert(key, others.iter().map(|&r| load(r, 0.125, 2.0)).collect());
        let aims = evaluate(&plan, &results, &scale);
        assert_eq!(aims[0].met, Some(met), "{others:?}: {:?}", aims[0]);
    }
    // A pair without a successful request is not a sample; the others' median stands.
    let (plan, mut results, scale) = on_the_line();
    let nginx = row_mut(&mut results, Route::Nginx);
    nginx.again.insert(
        key,
        vec![
            load(40_000.0, 0.1, 1.0),
            load(0.0, 0.0, 0.0).with_requests(0),
        ],
    );
    let aims = evaluate(&plan, &results, &scale);
    assert!(
        aims[0].this_run.contains("60000 vs 45000 req/s"),
        "{:?}",
        aims[0]
    );
    assert!(
        aims[1].this_run.contains("2.00 vs 1.50 ms"),
        "{:?}",
        aims[1]
    );

    // The CPU aim reads the median CPU time per request of the fixed-count runs.
    let (plan, mut results, scale) = on_the_line();
    let proxy = row_mut(&mut results, PROXY);
    let mut slow = proxy.cpu[&Proto::H2].clone();
    slow.cpu_gateway = 1.5;
    proxy.cpu_again.insert(Proto::H2, vec![slow.clone(), slow]);
    assert_eq!(misses(&plan, &results, &scale), (vec![10], vec![]));

    // The bulk aim reads the median download of library mode and of nginx (2 000 against
    // 1 000 MB/s on the line); a failed download is no sample.
    for (lib, nginx, met) in [
        (vec![900.0, 2100.0], vec![], true),
        (vec![900.0, 1900.0], vec![], false),
        (vec![2100.0], vec![1100.0, 900.0], true),
        (vec![2100.0], vec![1100.0, 1200.0], false),
    ] {
        let (plan, mut results, scale) = on_the_line();
        row_mut(&mut results, LIBRARY).bulk_again = lib.clone();
        row_mut(&mut results, Route::Nginx).bulk_again = nginx.clone();
        let aims = evaluate(&plan, &results, &scale);
        assert_eq!(aims[6].met, Some(met), "{lib:?} {nginx:?}: {:?}", aims[6]);
    }
    let (plan, mut results, scale) = on_the_line();
    let lib = row_mut(&mut results, LIBRARY);
    lib.bulk_mb_s = None;
    lib.bulk_again = vec![1500.0, 2500.0];
    let aims = evaluate(&plan, &results, &scale);
    assert!(
        aims[6].this_run.contains("2000 vs 1000 MB/s"),
        "{:?}",
        aims[6]
    );
}

#[test]
fn the_median_is_per_figure_and_over_successful_samples() {
    let a = Load {
        cpu_gateway: 2.0,
        failed: 1,
        ..load(100.0, 1.0, 9.0)
    };
    let b = Load {
        requests: 2000,
        cpu_gateway: 2.0,
        ..load(300.0, 3.0, 5.0)
    };
    let c = load(200.0, 2.0, 7.0);
    let m = measure::median([&a, &b, &c].into_iter()).unwrap();
    assert_eq!((m.rps, m.p50_ms, m.p99_ms), (200.0, 2.0, 7.0));
    assert_eq!((m.requests, m.failed), (2000, 1));
    // Per request: 2 ms, 1 ms, 0 ms; the median 1 ms, times 2 000 requests.
    assert!((m.cpu_gateway - 2.0).abs() < 1e-9, "{m:?}");
    let two = measure::median([&a, &c].into_iter()).unwrap();
    assert_eq!(two.rps, 150.0);
    let none = load(1.0, 1.0, 1.0).with_requests(0);
    assert!(measure::median([&none].into_iter()).is_none());
}

#[test]
fn the_rows_of_the_aims_repeat_exactly_the_runs_the_aims_read() {
    let plan = Plan::new(false);
    let keys = |path: Route| {
        let spec = ROWS.iter().find(|s| s.is(path)).unwrap();
        measure::aim_keys(spec, &plan)
    };
    let at = |c| vec![("1k", Proto::H1, c), ("1k", Proto::H2, c)];
    assert_eq!(keys(Route::Direct), at(1));
    assert_eq!(keys(LIBRARY), [at(1), at(64)].concat());
    for path in [Route::Nginx, PROXY, Route::Rathole] {
        assert_eq!(keys(path), at(64), "{path:?}");
    }
    for spec in ROWS
        .iter()
        .filter(|s| s.threads.is_some() || s.h2c_upstream)
    {
        assert!(measure::aim_keys(spec, &plan).is_empty(), "{spec:?}");
    }
    let bulk: Vec<&str> = ROWS
        .iter()
        .filter(|s| measure::bulk_aim(s))
        .map(|s| s.label)
        .collect();
    assert_eq!(bulk, ["nginx", "ptth library rh2"]);
    // In --smoke the two concurrencies are one: each run once.
    let smoke = Plan::new(true);
    let spec = ROWS.iter().find(|s| s.is(LIBRARY)).unwrap();
    assert_eq!(measure::aim_keys(spec, &smoke), at(16));
    assert_eq!(smoke.aim_samples, 2);
}
