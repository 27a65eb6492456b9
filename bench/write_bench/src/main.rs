//! Single-room write benchmark: one user registers, creates a room, sends
//! N messages one after another, then N more from W concurrent workers;
//! prints msg/s and the p50/p99 of each PUT for both phases, as JSON.
//!
//! `write_bench --url http://127.0.0.1:8008 [--messages 500] [--workers 10]
//!  [--registration-token TOKEN] [--label TEXT]`

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};

struct Args {
    url: String,
    messages: usize,
    workers: usize,
    token: Option<String>,
    label: String,
}

fn args() -> Result<Args> {
    let mut a = Args {
        url: String::new(),
        messages: 500,
        workers: 10,
        token: None,
        label: String::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--url" => a.url = value()?,
            "--messages" => a.messages = value()?.parse()?,
            "--workers" => a.workers = value()?.parse()?,
            "--registration-token" => a.token = Some(value()?),
            "--label" => a.label = value()?,
            other => bail!("unknown argument {other}"),
        }
    }
    ensure!(!a.url.is_empty(), "--url is required");
    ensure!(
        a.workers > 0 && a.messages >= a.workers,
        "--messages must be at least --workers"
    );
    Ok(a)
}

struct Client {
    http: reqwest::Client,
    base: String,
}

impl Client {
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: &Value,
    ) -> Result<(u16, Value)> {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .json(body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await?;
        let status = resp.status().as_u16();
        let body = resp.json().await.unwrap_or(Value::Null);
        Ok((status, body))
    }

    /// Registers through user-interactive auth (dummy or registration token).
    async fn register(&self, user: &str, token: Option<&str>) -> Result<String> {
        let path = "/_matrix/client/v3/register";
        let body = json!({"username": user, "password": "write-bench-password"});
        let (status, first) = self.call(reqwest::Method::POST, path, None, &body).await?;
        ensure!(
            status == 401,
            "register: expected the UIA 401, got {status} {first}"
        );
        let session = first["session"].clone();
        let mut result = Value::Null;
        for stage in ["m.login.registration_token", "m.login.dummy"] {
            let offered = first["flows"].as_array().is_some_and(|flows| {
                flows.iter().any(|f| {
                    f["stages"]
                        .as_array()
                        .is_some_and(|s| s.iter().any(|x| x == stage))
                })
            });
            if !offered || (stage == "m.login.registration_token" && token.is_none()) {
                continue;
            }
            let mut auth = json!({"type": stage, "session": session});
            if let Some(t) = token {
                auth["token"] = json!(t);
            }
            let mut body = body.clone();
            body["auth"] = auth;
            let (status, answer) = self.call(reqwest::Method::POST, path, None, &body).await?;
            if status == 200 {
                return answer["access_token"]
                    .as_str()
                    .map(str::to_owned)
                    .context("no access_token");
            }
            result = answer;
        }
        bail!(
            "registration did not complete: {result} (flows: {})",
            first["flows"]
        )
    }
}

/// Percentile of sorted latencies (nearest rank), in milliseconds.
fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1].as_secs_f64() * 1000.0
}

fn summary(mut latencies: Vec<Duration>, elapsed: Duration) -> Value {
    latencies.sort();
    json!({
        "messages": latencies.len(),
        "seconds": elapsed.as_secs_f64(),
        "msgs_per_s": latencies.len() as f64 / elapsed.as_secs_f64(),
        "put_ms_p50": percentile(&latencies, 50.0),
        "put_ms_p99": percentile(&latencies, 99.0),
        "put_ms_max": percentile(&latencies, 100.0),
    })
}

async fn send(client: &Client, token: &str, room: &str, txn: &str, n: usize) -> Result<Duration> {
    let path = format!(
        "/_matrix/client/v3/rooms/{}/send/m.room.message/{txn}",
        room.replace('!', "%21").replace(':', "%3A")
    );
    let body = json!({"msgtype": "m.text", "body": format!("write bench message {n}")});
    let start = Instant::now();
    let (status, answer) = client
        .call(reqwest::Method::PUT, &path, Some(token), &body)
        .await?;
    ensure!(
        status == 200 && answer["event_id"].is_string(),
        "send {n}: {status} {answer}"
    );
    Ok(start.elapsed())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 1)]
async fn main() -> Result<()> {
    let a = args()?;
    let client = Client {
        http: reqwest::Client::builder()
            .pool_max_idle_per_host(64)
            .no_proxy()
            .build()?,
        base: a.url.trim_end_matches('/').to_owned(),
    };
    let run = format!(
        "{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_millis()
    );
    let token = client
        .register(&format!("writebench{run}"), a.token.as_deref())
        .await?;
    let (status, room) = client
        .call(
            reqwest::Method::POST,
            "/_matrix/client/v3/createRoom",
            Some(&token),
            &json!({"preset": "private_chat", "name": "write bench"}),
        )
        .await?;
    ensure!(status == 200, "createRoom: {status} {room}");
    let room = room["room_id"].as_str().context("no room_id")?.to_owned();

    let start = Instant::now();
    let mut sequential = Vec::with_capacity(a.messages);
    for n in 0..a.messages {
        sequential.push(send(&client, &token, &room, &format!("{run}-s{n}"), n).await?);
    }
    let sequential = summary(sequential, start.elapsed());

    let per_worker = a.messages / a.workers;
    let start = Instant::now();
    let tasks: Vec<_> = (0..a.workers)
        .map(|w| {
            let (client, token, room, run) = (
                Client {
                    http: client.http.clone(),
                    base: client.base.clone(),
                },
                token.clone(),
                room.clone(),
                run.clone(),
            );
            tokio::spawn(async move {
                let mut out = Vec::with_capacity(per_worker);
                for n in 0..per_worker {
                    out.push(send(&client, &token, &room, &format!("{run}-w{w}-{n}"), n).await?);
                }
                anyhow::Ok(out)
            })
        })
        .collect();
    let mut concurrent = Vec::with_capacity(a.messages);
    for t in tasks {
        concurrent.extend(t.await??);
    }
    let concurrent = summary(concurrent, start.elapsed());
    let out = json!({
        "label": a.label,
        "url": a.url,
        "workers": a.workers,
        "sequential": sequential,
        "concurrent": concurrent,
    });
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}
