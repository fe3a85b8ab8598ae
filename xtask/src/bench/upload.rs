//! The upload row: one large request body (5 GiB in the full run, `--upload-bytes N` to
//! change it, 16 MiB in `--smoke`) through the gateway and `ptth-origin --mechanism rh2
//! --upstream h2c://…` to the app's `/upload`, which reads it to the end, discards it and
//! answers with the byte count; beside the same upload straight to the app. Fresh processes
//! for the ptth side, so the peak RSS (`VmHWM`) of gateway and origin is this upload's:
//! bounded memory on both ends is what the row shows.
//!
//! The client is curl over HTTP/1.1, reading the body from a pipe (`head -c N /dev/zero`),
//! so it sends the body chunked and holds none of it either.

use super::plan::{Plan, Route, RowSpec, HOST};
use super::sample::{self, Side};
use super::stack;
use anyhow::{bail, Context, Result};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};

/// The ptth side of the row: rh2 proxy mode to an `h2c://` upstream.
pub const PTTH: RowSpec = RowSpec::new(
    "f",
    "upload, ptth proxy rh2, h2c:// upstream",
    Route::Proxy("rh2"),
)
.h2c_upstream();

/// The baseline: the same upload to the app directly.
const DIRECT: RowSpec = RowSpec::new("f", "upload, direct", Route::Direct);

/// What the upload row measured.
#[derive(Debug, Clone)]
pub struct Upload {
    /// The body's size in bytes.
    pub bytes: u64,
    /// MB/s (10^6 bytes per second) straight to the app.
    pub direct_mb_s: f64,
    /// MB/s through ptth.
    pub ptth_mb_s: f64,
    /// Peak RSS of the gateway's process tree, KiB.
    pub hwm_gateway_kib: Option<u64>,
    /// Peak RSS of the origin's process tree, KiB.
    pub hwm_origin_kib: Option<u64>,
    /// The load average (1, 5, 15 min) before and after.
    pub load_before: String,
    pub load_after: String,
}

/// Runs the upload direct, then through ptth.
pub fn upload_run(plan: &Plan, bin: &Path, app: &Path, dev: &Path, tmp: &Path) -> Result<Upload> {
    let load_before = sample::loadavg();
    let direct = stack::start_row(&DIRECT, plan, bin, app, dev, tmp)?
        .context("the direct row needs no baseline")?;
    eprintln!("   upload {} bytes direct", plan.upload_bytes);
    let direct_mb_s = upload(direct.addr, plan.upload_bytes)?;
    eprintln!("   direct {direct_mb_s:.0} MB/s");
    drop(direct);
    let row = stack::start_row(&PTTH, plan, bin, app, dev, tmp)?
        .context("the ptth row needs no baseline")?;
    eprintln!("   upload {} bytes through ptth", plan.upload_bytes);
    let ptth_mb_s = upload(row.addr, plan.upload_bytes)?;
    let hwm_gateway_kib = sample::side_hwm(&row.watched, Side::Gateway);
    let hwm_origin_kib = sample::side_hwm(&row.watched, Side::Origin);
    eprintln!(
        "   ptth {ptth_mb_s:.0} MB/s; peak RSS gateway {:?} KiB, origin {:?} KiB",
        hwm_gateway_kib, hwm_origin_kib
    );
    Ok(Upload {
        bytes: plan.upload_bytes,
        direct_mb_s,
        ptth_mb_s,
        hwm_gateway_kib,
        hwm_origin_kib,
        load_before,
        load_after: sample::loadavg(),
    })
}

/// Uploads `bytes` zero bytes to `/upload` at `addr` and returns MB/s; fails unless the
/// app answered `204` having counted every byte.
fn upload(addr: SocketAddr, bytes: u64) -> Result<f64> {
    let mut source = Command::new("head")
        .args(["-c", &bytes.to_string(), "/dev/zero"])
        .stdout(Stdio::piped())
        .spawn()
        .context("starting head -c N /dev/zero")?;
    let pipe = source.stdout.take().context("head's stdout")?;
    let out = Command::new("curl")
        .args(["-sS", "--http1.1", "-o", "/dev/null", "--max-time", "3600"])
        .args(["-X", "POST", "-T", "-"])
        .args(["-H", &format!("Host: {HOST}")])
        // No `Expect: 100-continue` round trip before the body.
        .args(["-H", "Expect:"])
        .args(["-w", "%{http_code} %{time_total} %header{x-received}"])
        .arg(format!("http://127.0.0.1:{}/upload", addr.port()))
        .stdin(pipe)
        .stderr(Stdio::inherit())
        .output()
        .context("running curl")?;
    let _ = source.wait();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    parse_curl(&text, bytes)
}

/// Reads curl's `-w` line (status, seconds, the app's count) into MB/s of body. curl's own
/// upload size and speed count the chunked framing too, so the app's count is the measure.
fn parse_curl(text: &str, bytes: u64) -> Result<f64> {
    let f: Vec<&str> = text.split_whitespace().collect();
    let seconds = f.get(1).and_then(|s| s.parse::<f64>().ok());
    let received = f.get(2).and_then(|s| s.parse::<u64>().ok());
    match (f.first(), seconds, received) {
        (Some(&"204"), Some(seconds), Some(n)) if n == bytes && seconds > 0.0 => {
            Ok(bytes as f64 / seconds / 1e6)
        }
        _ => bail!(
            "upload of {bytes} bytes failed: curl wrote {text:?} (status, seconds, bytes the app received)"
        ),
    }
}

/// The report's section on the upload row.
pub fn render(d: &mut String, upload: &Result<Upload>) {
    use std::fmt::Write as _;
    let _ = writeln!(
        d,
        "\n## Upload: one large request body (rh2, h2c:// upstream)\n"
    );
    let u = match upload {
        Ok(u) => u,
        Err(e) => {
            let _ = writeln!(d, "The upload run failed: {e:#}");
            return;
        }
    };
    let mib = |k: Option<u64>| k.map_or("–".into(), |k| format!("{:.1}", k as f64 / 1024.0));
    let one_minute = |load: &str| {
        load.split_whitespace()
            .next()
            .and_then(|l| l.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let loaded = one_minute(&u.load_before).max(one_minute(&u.load_after)) >= 1.5;
    let _ = writeln!(
        d,
        "One `POST /upload` of {} bytes ({:.2} GiB) with curl over HTTP/1.1 (chunked, read \
         from a pipe) to `bench_app`, which reads the body to its end, discards it and \
         answers with the count; the row fails unless the count is exact. Through ptth: the \
         gateway's public cleartext listener, `ptth-origin --mechanism rh2 --upstream \
         h2c://…`, fresh processes, so the peak RSS (`VmHWM`, process trees) is this \
         upload's. Load average before {}, after {}{}.\n\n\
         | path | MB/s | vs direct | peak RSS gateway MiB | peak RSS origin MiB |\n\
         |---|---|---|---|---|\n\
         | ({}) {} | {:.0} | 1.00 | – | – |\n\
         | ({}) {} | {:.0} | {} | {} | {} |",
        u.bytes,
        u.bytes as f64 / f64::from(1u32 << 30),
        u.load_before,
        u.load_after,
        if loaded {
            ": **the machine was loaded by other work, so MB/s and the ratio are noisy** \
             (the peak RSS is not moved by load)"
        } else {
            ""
        },
        DIRECT.id,
        DIRECT.label,
        u.direct_mb_s,
        PTTH.id,
        PTTH.label,
        u.ptth_mb_s,
        if u.direct_mb_s > 0.0 {
            format!("{:.2}", u.ptth_mb_s / u.direct_mb_s)
        } else {
            "–".into()
        },
        mib(u.hwm_gateway_kib),
        mib(u.hwm_origin_kib),
    );
}

/// Replaces the upload section of the report `doc` (from its heading to the next `## `
/// heading or the end) with `section`, or appends it when there is none.
pub fn replace_section(doc: &str, section: &str) -> String {
    const HEADING: &str = "\n## Upload: ";
    let Some(start) = doc.find(HEADING) else {
        return format!("{}\n{}", doc.trim_end(), section);
    };
    let rest = &doc[start + HEADING.len()..];
    let end = rest
        .find("\n## ")
        .map_or(doc.len(), |i| start + HEADING.len() + i);
    format!("{}{}\n{}", &doc[..start], section.trim_end(), &doc[end..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn curl_s_line_is_read_and_a_short_count_fails() {
        let mb = parse_curl("204 2.0 1000000000", 1_000_000_000).unwrap();
        assert!((mb - 500.0).abs() < 1e-9);
        for bad in [
            "204 2.0 999999999",
            "502 2.0 1000000000",
            "204 0 1000000000",
            "204 2.0 ",
            "",
        ] {
            assert!(
                parse_curl(bad, 1_000_000_000).is_err(),
                "{bad:?} was accepted"
            );
        }
    }

    #[test]
    fn the_upload_section_is_replaced_in_place_or_appended() {
        let section = "\n## Upload: new\n\nnew body\n";
        let doc = "# B\n\n## A\n\na\n\n## Upload: old\n\nold\n\n## Scale\n\ns\n";
        assert_eq!(
            replace_section(doc, section),
            "# B\n\n## A\n\na\n\n## Upload: new\n\nnew body\n\n## Scale\n\ns\n"
        );
        let last = "# B\n\n## Upload: old\n\nold\n";
        assert_eq!(
            replace_section(last, section),
            "# B\n\n## Upload: new\n\nnew body\n"
        );
        assert_eq!(
            replace_section("# B\n\n## A\n", section),
            "# B\n\n## A\n\n## Upload: new\n\nnew body\n"
        );
    }
}
