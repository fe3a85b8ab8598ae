//! What a bench run measures: the rows (paths from the load generator to the application),
//! the concurrencies, bodies and durations of the full run and of `--smoke`.

/// A name the dev certificate lists (rustls, like OpenSSL, will not match its `*.localhost`).
pub const HOST: &str = "app.localhost";

/// How much to run.
#[derive(Debug, Clone)]
pub struct Plan {
    pub smoke: bool,
    /// Requests outstanding in the time-based load runs, for every row, body and protocol.
    pub concurrency: Vec<usize>,
    /// The concurrencies the headline tables show (a subset of `concurrency`).
    pub headline: Vec<usize>,
    /// The concurrency the throughput, p99 and CPU aims are read at.
    pub aim_c: usize,
    /// The concurrency the added-latency aim is read at.
    pub latency_c: usize,
    pub bodies: Vec<&'static str>,
    pub seconds: u64,
    pub bulk_bytes: u64,
    /// The request body of the upload row ([`super::upload`]); `--upload-bytes N` changes it.
    pub upload_bytes: u64,
    /// Requests in each fixed-count CPU run (rows with [`RowSpec::cpu`]).
    pub cpu_requests: u64,
    /// Bytes of each single TCP flow of the TCP row ([`super::tcp`]), each way.
    pub tcp_bytes: u64,
    /// Concurrent flows of the TCP row's memory run, and the bytes each moves.
    pub tcp_flows: usize,
    pub tcp_flow_bytes: u64,
    /// Idle origin connections of other hosts in the scale run, cumulative.
    pub scale: Vec<usize>,
    pub restart_connections: usize,
    /// `--connections` of the HTTP/1.1 mechanisms' origins.
    pub h1_connections: usize,
    /// Process pairs each aim's runs are measured on, the row's own first: the aims read
    /// the median ([`super::measure::RowResult::aim_load`]).
    pub aim_samples: usize,
}

impl Plan {
    pub fn new(smoke: bool) -> Self {
        if smoke {
            Self {
                smoke,
                concurrency: vec![16],
                headline: vec![16],
                aim_c: 16,
                latency_c: 16,
                bodies: vec!["1k"],
                seconds: 1,
                bulk_bytes: 16 << 20,
                upload_bytes: 16 << 20,
                cpu_requests: 5_000,
                tcp_bytes: 16 << 20,
                tcp_flows: 4,
                tcp_flow_bytes: 4 << 20,
                scale: vec![50],
                restart_connections: 50,
                h1_connections: 16,
                aim_samples: 2,
            }
        } else {
            Self {
                smoke,
                concurrency: vec![1, 16, 64, 256],
                headline: vec![1, 64, 256],
                aim_c: 64,
                latency_c: 1,
                bodies: vec!["1k", "1m"],
                seconds: 5,
                bulk_bytes: 1 << 30,
                upload_bytes: 5 << 30,
                cpu_requests: 100_000,
                tcp_bytes: 1 << 30,
                tcp_flows: 8,
                tcp_flow_bytes: 128 << 20,
                scale: vec![1000, 10_000],
                restart_connections: 1000,
                h1_connections: 64,
                aim_samples: 3,
            }
        }
    }
}

/// What sits between the load generator and the app.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Direct,
    Nginx,
    /// Proxy mode over this mechanism.
    Proxy(&'static str),
    /// Library mode over this mechanism.
    Library(&'static str),
    Rathole,
}

#[derive(Debug, Clone, Copy)]
pub struct RowSpec {
    pub id: &'static str,
    pub label: &'static str,
    pub path: Route,
    /// Worker threads of each ptth process (`--threads`); `None` is the default, one per CPU.
    pub threads: Option<usize>,
    /// Also load the row through the gateway's public HTTP/3 endpoint with `ptth-h3-client`.
    pub h3: bool,
    /// Also run a fixed number of requests at [`Plan::aim_c`] and take the CPU time the
    /// row's processes spent on them.
    pub cpu: bool,
    /// Proxy mode's upstream is `h2c://` (HTTP/2 with prior knowledge) instead of `http://`.
    pub h2c_upstream: bool,
}

impl RowSpec {
    pub const fn new(id: &'static str, label: &'static str, path: Route) -> Self {
        Self {
            id,
            label,
            path,
            threads: None,
            h3: false,
            cpu: false,
            h2c_upstream: false,
        }
    }

    pub const fn h2c_upstream(mut self) -> Self {
        self.h2c_upstream = true;
        self
    }

    const fn threads(mut self, n: usize) -> Self {
        self.threads = Some(n);
        self
    }

    const fn h3(mut self) -> Self {
        self.h3 = true;
        self
    }

    const fn cpu(mut self) -> Self {
        self.cpu = true;
        self
    }

    /// `(id) label`, as the report names the row.
    pub fn name(&self) -> String {
        format!("({}) {}", self.id, self.label)
    }

    /// Whether this row is `path` with the default number of threads (and, for proxy mode,
    /// the HTTP/1.1 upstream).
    pub fn is(&self, path: Route) -> bool {
        self.path == path && self.threads.is_none() && !self.h2c_upstream
    }
}

pub const ROWS: &[RowSpec] = &[
    RowSpec::new("a", "direct", Route::Direct),
    RowSpec::new("b", "nginx", Route::Nginx).cpu(),
    RowSpec::new("c", "ptth proxy rh2", Route::Proxy("rh2"))
        .h3()
        .cpu(),
    RowSpec::new("c", "ptth proxy rh2, h2c:// upstream", Route::Proxy("rh2")).h2c_upstream(),
    RowSpec::new("c", "ptth proxy upgrade-h2", Route::Proxy("upgrade-h2")),
    RowSpec::new("c", "ptth proxy connect-h2", Route::Proxy("connect-h2")),
    RowSpec::new("c", "ptth proxy rh1", Route::Proxy("rh1")),
    RowSpec::new("c", "ptth proxy rh3", Route::Proxy("rh3")).h3(),
    RowSpec::new("c", "ptth proxy rh2 --threads 1", Route::Proxy("rh2")).threads(1),
    RowSpec::new("d", "ptth library rh2", Route::Library("rh2"))
        .h3()
        .cpu(),
    RowSpec::new("d", "ptth library rh2 --threads 1", Route::Library("rh2")).threads(1),
    RowSpec::new("e", "rathole", Route::Rathole).cpu(),
];
