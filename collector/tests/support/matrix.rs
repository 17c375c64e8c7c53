//! The HTTP matrix, shared by the host's matrix tests and the kernel-matrix guests: drive one
//! fixture server with real clients (keep-alive with pipelining, chunked responses, timed
//! requests, nginx's sendfile and proxy), then check what a collector captured against what
//! was sent. `check` returns what is wrong instead of panicking, so a guest can report every
//! failure of a run.

use std::collections::{BTreeMap, HashMap};

use super::*;

/// How much traffic one app gets.
#[derive(Clone, Copy, Debug)]
pub struct MatrixSize {
    /// Single curl requests first (a cold JVM or Node spends tens of ms on them).
    pub warm: usize,
    /// Requests on one keep-alive connection, every 10th group of 5 pipelined.
    pub keep_alive: usize,
    /// Server-side delays of the timed requests, in ms. The apps' own per-request work (a
    /// JDK server's dispatch hand-off, nginx's proxy hop) reaches ~2 ms natively and more
    /// under emulation; at these delays the max(1 ms, 2 %) tolerance measures the capture.
    pub delays: &'static [u64],
    /// Room above the tolerance for the app's own work around the delay (reading and parsing
    /// the request, writing the answer), which the captured duration holds and the server's
    /// delay does not. Never below: a capture shorter than the delay is wrong.
    pub own_work_ms: f64,
}

/// A server that got its traffic, and what was sent to it.
pub struct Traffic {
    pub server: Server,
    run: String,
    /// (path, status) of every request sent to the server.
    sent: Vec<(String, u16)>,
    /// Delay asked → how long the handler says it slept, in ms.
    slept: HashMap<u64, f64>,
}

/// One timed request: the server's own duration and the captured one.
#[derive(Clone, Debug)]
pub struct Timing {
    pub app: App,
    pub url: String,
    pub server_ms: f64,
    pub captured_ms: f64,
}

const CHUNKED_REQUESTS: usize = 3;

impl Traffic {
    /// Requests sent to the server.
    pub fn sent_count(&self) -> usize {
        self.sent.len()
    }

    /// Server-side exchanges captured on this server.
    pub fn captured_count(&self, seen: &[SeenExchange]) -> usize {
        let prefix = format!("http://127.0.0.1:{}/", self.server.port);
        seen.iter()
            .filter(|e| e.role == "server" && e.url.starts_with(&prefix))
            .count()
    }
}

/// Starts `app` and sends it its traffic.
pub fn drive(app: App, size: &MatrixSize) -> Traffic {
    drive_server(start_server(app), size)
}

/// Sends a started server its traffic.
pub fn drive_server(server: Server, size: &MatrixSize) -> Traffic {
    let app = server.app;
    let port = server.port;
    let run = unique("m");
    let mut sent: Vec<(String, u16)> = Vec::new();
    let url = |p: &str| format!("http://127.0.0.1:{port}{p}");

    let warm: Vec<String> = (0..size.warm)
        .map(|i| format!("/ok/{run}-warm-{i}"))
        .collect();
    for p in &warm {
        assert_eq!(curl(&url(p)), 200, "{app:?} {p}");
    }
    sent.extend(warm.into_iter().map(|p| (p, 200)));

    let paths: Vec<String> = (0..size.keep_alive)
        .map(|i| format!("/ok/{run}-{i}"))
        .collect();
    let statuses = keep_alive_client(port, &paths, 10, 5);
    assert!(statuses.iter().all(|&s| s == 200), "{app:?}: {statuses:?}");
    sent.extend(paths.into_iter().map(|p| (p, 200)));

    for i in 0..CHUNKED_REQUESTS {
        let p = format!("/chunked/{run}-{i}");
        assert_eq!(curl(&url(&p)), 200, "{app:?} {p}");
        sent.push((p, 200));
    }

    // Timed requests, one curl process each. Each handler reports how long it really slept
    // (a runtime may wake late, e.g. after a GC pause): that is the known server-side delay.
    let mut slept = HashMap::new();
    for &d in size.delays {
        let path = format!("/sleep/{d}/{run}-{d}");
        let (status, actual) = curl_timed(&url(&path));
        assert_eq!(status, 200, "{app:?} {path}");
        slept.insert(d, actual.expect("the fixture reports X-Slept-Us"));
        sent.push((path, 200));
    }
    // nginx: a 5 MB static file through sendfile.
    if app == App::Nginx {
        assert_eq!(curl(&url("/big.bin")), 200);
        sent.push(("/big.bin".into(), 200));
    }
    Traffic {
        server,
        run,
        sent,
        slept,
    }
}

/// Compares what the collector captured (`seen`) with what `t` sent; returns the timed
/// requests' durations, or everything that is wrong.
pub fn check(t: &Traffic, seen: &[SeenExchange], size: &MatrixSize) -> Result<Vec<Timing>, String> {
    let app = t.server.app;
    let run = &t.run;
    let prefix = format!("http://127.0.0.1:{}/", t.server.port);
    let mut errors = Vec::new();

    // Server side: exactly the requests sent.
    let server_side: Vec<&SeenExchange> = seen
        .iter()
        .filter(|e| e.role == "server" && e.url.starts_with(&prefix))
        .collect();
    let got = multiset(server_side.iter().map(|e| {
        (
            e.method.clone(),
            e.url[prefix.len() - 1..].to_owned(),
            e.status.unwrap_or(0) as u16,
        )
    }));
    let want = multiset(
        t.sent
            .iter()
            .map(|(p, s)| ("GET".to_owned(), p.clone(), *s)),
    );
    if got != want {
        let differs = |a: &BTreeMap<_, usize>, b: &BTreeMap<_, usize>| {
            a.keys()
                .filter(|k| a.get(*k) != b.get(*k))
                .take(10)
                .cloned()
                .collect::<Vec<_>>()
        };
        errors.push(format!(
            "{app:?}: captured {} server exchanges for {} sent; first differences: missing {:?}, \
             extra {:?}",
            server_side.len(),
            t.sent.len(),
            differs(&want, &got),
            differs(&got, &want)
        ));
    }

    for e in server_side.iter().filter(|e| e.url.contains("/chunked/")) {
        let f = &e.flags;
        if f["incomplete"] == true || f["end_approximate"] == true || f["ended_at_stop"] == true {
            errors.push(format!(
                "{app:?}: chunked response not framed cleanly: {e:?}"
            ));
        }
    }

    // Durations of the timed requests: within max(1 ms, 2 %) of the server's delay.
    let mut timings = Vec::new();
    for &d in size.delays {
        let url = format!("{prefix}sleep/{d}/{run}-{d}");
        let Some(e) = server_side.iter().find(|e| e.url == url) else {
            continue; // reported as missing above
        };
        // The server-side delay: what the handler slept; for nginx, which proxies to a
        // backend, nginx's own $request_time (its proxy hop and the backend's parsing are
        // nginx's time too), which has millisecond resolution.
        let (actual, resolution) = match &t.server.dir {
            Some(dir) if app == App::Nginx => (
                nginx_request_time_ms(&dir.0, &format!("/sleep/{d}/{run}-{d}")),
                1.0,
            ),
            _ => (t.slept[&d], 0.0),
        };
        let tolerance = (actual * 0.02).max(1.0);
        let diff = e.duration_ms - actual;
        let above = tolerance + resolution + size.own_work_ms;
        if diff < -tolerance || diff > above {
            errors.push(format!(
                "{app:?}: {url} took {:.3} ms; the server says {actual:.3} ms (-{tolerance} ms, \
                 +{above} ms)",
                e.duration_ms
            ));
        }
        timings.push(Timing {
            app,
            url: url.clone(),
            server_ms: actual,
            captured_ms: e.duration_ms,
        });
        // The client side (curl) is captured too, and also brackets the delay.
        match seen
            .iter()
            .find(|c| c.role == "client" && c.comm == "curl" && c.url == url)
        {
            None => errors.push(format!(
                "{app:?}: no client-side exchange from curl for {url}"
            )),
            Some(c) if c.status != Some(200) || c.duration_ms < e.duration_ms - 1.0 => {
                errors.push(format!("{app:?}: client {c:?} vs server {e:?}"))
            }
            Some(_) => {}
        }
    }

    if app == App::Nginx {
        match server_side.iter().find(|e| e.url.ends_with("/big.bin")) {
            Some(big) if big.response_body_bytes != BIG_FILE_BYTES as u64 => {
                errors.push(format!("nginx: sendfile response of {big:?}"))
            }
            _ => {}
        }
        // nginx's own calls to its backend are client-side exchanges of nginx.
        let backend = t.server.backend.as_ref().expect("nginx has a backend").port;
        for &d in size.delays {
            let url = format!("http://127.0.0.1:{backend}/sleep/{d}/{run}-{d}");
            let e = seen
                .iter()
                .find(|e| e.role == "client" && e.comm == "nginx" && e.url == url);
            match e {
                None => errors.push(format!("nginx: no nginx → backend exchange for {url}")),
                Some(e) => {
                    let actual = t.slept[&d];
                    let tolerance = (actual * 0.02).max(1.0);
                    if (e.duration_ms - actual).abs() > tolerance {
                        errors.push(format!("nginx → backend {e:?}: slept {actual:.3} ms"));
                    }
                }
            }
        }
    }
    if errors.is_empty() {
        Ok(timings)
    } else {
        Err(errors.join("\n"))
    }
}

/// nginx's $request_time for the request with this path, in ms (the last field of the
/// `timed` log format).
fn nginx_request_time_ms(dir: &std::path::Path, path: &str) -> f64 {
    let log = std::fs::read_to_string(dir.join("access.log")).expect("nginx access log");
    let line = log
        .lines()
        .find(|l| l.contains(&format!("GET {path} ")))
        .unwrap_or_else(|| panic!("nginx logged no {path}"));
    let secs: f64 = line
        .rsplit(' ')
        .next()
        .and_then(|v| v.parse().ok())
        .expect("$request_time");
    secs * 1e3
}

fn multiset<T: Ord>(items: impl Iterator<Item = T>) -> BTreeMap<T, usize> {
    let mut m = BTreeMap::new();
    for i in items {
        *m.entry(i).or_insert(0) += 1;
    }
    m
}
