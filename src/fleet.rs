//! Operator commands about edges: `portico cluster edges`, `portico edge remove`, and the
//! progress of `portico deploy --wait`.

use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use bytes::Bytes;
use http::Method;
use serde_json::Value;

use crate::admin_client::AdminClient;
use crate::commands::{
    EdgeRemoveArgs, Output, Remote, client, print_json, print_table, runtime, str_of,
};

async fn fetch_edges(client: &AdminClient) -> Result<Value> {
    client
        .ok(
            Method::GET,
            "/v1/cluster/edges",
            "application/json",
            Bytes::new(),
        )
        .await
}

pub fn edges(remote: &Remote) -> Result<()> {
    let client = client(remote)?;
    let answer = runtime()?.block_on(fetch_edges(&client))?;
    if remote.output == Output::Json {
        return print_json(&answer);
    }
    let now_rows: Vec<Vec<String>> = answer["items"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .map(|e| {
                    vec![
                        str_of(&e["id"]),
                        str_of(&e["region"]),
                        str_of(&e["status"]),
                        str_of(&e["revision"]),
                        str_of(&e["lag"]),
                        e["last_seen_ago_ms"]
                            .as_u64()
                            .map_or("-".into(), |ms| format!("{:.1}s ago", ms as f64 / 1000.0)),
                        str_of(&e["software_version"]),
                        str_of(&e["node"]),
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    println!("cluster revision {}", answer["revision"]);
    print_table(
        &[
            "ID",
            "REGION",
            "STATUS",
            "REVISION",
            "LAG",
            "LAST HEARTBEAT",
            "VERSION",
            "NODE",
        ],
        &now_rows,
    );
    warn_unreachable(&answer);
    Ok(())
}

fn warn_unreachable(answer: &Value) {
    if let Some(nodes) = answer["unreachable_nodes"]
        .as_array()
        .filter(|n| !n.is_empty())
    {
        let nodes: Vec<String> = nodes.iter().map(str_of).collect();
        eprintln!(
            "note: not every control node answered, edges they serve may show stale: {}",
            nodes.join("; ")
        );
    }
}

pub fn remove(args: EdgeRemoveArgs) -> Result<()> {
    let client = client(&args.remote)?;
    let path = format!("/v1/cluster/edges/{}", args.id);
    let answer =
        runtime()?.block_on(client.ok(Method::DELETE, &path, "application/json", Bytes::new()))?;
    if args.remote.output == Output::Json {
        return print_json(&answer);
    }
    println!("edge {} revoked; revision {}", args.id, answer["revision"]);
    Ok(())
}

/// Edges that must reach a revision: enrolled and not revoked.
fn tally(answer: &Value, revision: u64) -> (Vec<String>, Vec<String>) {
    let mut done = Vec::new();
    let mut lagging = Vec::new();
    for e in answer["items"].as_array().into_iter().flatten() {
        if e["status"] == "revoked" {
            continue;
        }
        let id = str_of(&e["id"]);
        if e["revision"].as_u64().is_some_and(|r| r >= revision) {
            done.push(id);
        } else {
            lagging.push(format!(
                "{id} ({}, at revision {})",
                str_of(&e["status"]),
                str_of(&e["revision"])
            ));
        }
    }
    (done, lagging)
}

/// Polls the edges until every one serves `revision`, drawing a progress bar on a terminal
/// (a line per change otherwise); fails after `timeout` naming the edges that lag.
pub async fn wait_for_edges(
    client: &AdminClient,
    revision: u64,
    timeout: Duration,
    output: Output,
) -> Result<()> {
    use std::io::IsTerminal;
    let started = Instant::now();
    let tty = std::io::stderr().is_terminal();
    let mut last_shown = None;
    loop {
        let answer = fetch_edges(client).await?;
        let (done, lagging) = tally(&answer, revision);
        let total = done.len() + lagging.len();
        if output == Output::Table && last_shown != Some(done.len()) {
            let width = 30;
            let filled = (done.len() * width).checked_div(total).unwrap_or(width);
            let bar = format!("[{}{}]", "#".repeat(filled), "-".repeat(width - filled));
            let line = format!(
                "{bar} {}/{total} edges at revision {revision} ({:.1}s)",
                done.len(),
                started.elapsed().as_secs_f64()
            );
            let mut err = std::io::stderr();
            if tty {
                let _ = write!(err, "\r{line}");
            } else {
                let _ = writeln!(err, "{line}");
            }
            let _ = err.flush();
            last_shown = Some(done.len());
        }
        if lagging.is_empty() {
            if tty && output == Output::Table {
                eprintln!();
            }
            if output == Output::Json {
                print_json(
                    &serde_json::json!({"revision": revision, "edges": done, "seconds": started.elapsed().as_secs_f64()}),
                )?;
            } else {
                println!(
                    "all {total} edges serve revision {revision} ({:.2}s)",
                    started.elapsed().as_secs_f64()
                );
            }
            return Ok(());
        }
        if started.elapsed() >= timeout {
            if tty {
                eprintln!();
            }
            warn_unreachable(&answer);
            bail!(
                "{} of {total} edges did not reach revision {revision} within {timeout:?}: {}",
                lagging.len(),
                lagging.join(", ")
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revoked_edges_do_not_hold_a_deploy_back() {
        let answer = serde_json::json!({"items": [
            {"id": "eu-1", "status": "connected", "revision": 9},
            {"id": "eu-2", "status": "disconnected", "revision": 4},
            {"id": "eu-3", "status": "revoked", "revision": 1},
            {"id": "us-4", "status": "unknown", "revision": null},
        ]});
        let (done, lagging) = tally(&answer, 9);
        assert_eq!(done, vec!["eu-1"]);
        assert_eq!(lagging.len(), 2);
        assert!(lagging[0].starts_with("eu-2 (disconnected, at revision 4)"));
    }
}
