//! The operator commands that talk to the admin API: apply, get, delete, deploy, cluster, token.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use clap::{Args, Subcommand, ValueEnum};
use http::Method;
use serde_json::{Value, json};

use crate::admin_client::AdminClient;

#[derive(Args, Debug)]
pub struct Remote {
    /// The admin API of any control node.
    #[arg(
        long,
        global = true,
        env = "PORTICO_SERVER",
        default_value = "127.0.0.1:7070"
    )]
    pub server: String,
    /// Where `portico dev` keeps its token (used when PORTICO_TOKEN is not set).
    #[arg(long, global = true, default_value = ".portico-dev")]
    pub dev_data: PathBuf,
    #[arg(long, short = 'o', global = true, value_enum, default_value = "table")]
    pub output: Output,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    Table,
    Json,
}

#[derive(Args, Debug)]
pub struct ApplyArgs {
    /// The declarative file (YAML, or JSON when it ends in .json).
    #[arg(long, short = 'f')]
    pub file: PathBuf,
    /// Show what would change, as a diff, without changing anything.
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub remote: Remote,
}

#[derive(Args, Debug)]
pub struct GetArgs {
    pub kind: Kind,
    /// An API id (for `apis`: that API; for `deployments`: whose deployments).
    pub name: Option<String>,
    #[command(flatten)]
    pub remote: Remote,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum Kind {
    #[value(alias = "api")]
    Apis,
    #[value(alias = "deployment")]
    Deployments,
    #[value(alias = "token")]
    Tokens,
}

#[derive(Args, Debug)]
pub struct DeleteArgs {
    pub kind: Kind,
    pub name: String,
    /// Only delete if the object is still at this revision.
    #[arg(long)]
    pub if_revision: Option<u64>,
    #[command(flatten)]
    pub remote: Remote,
}

#[derive(Args, Debug)]
pub struct DeployArgs {
    /// The API id.
    pub api: String,
    /// The stage to point at the new deployment.
    #[arg(long)]
    pub stage: String,
    #[arg(long, default_value = "")]
    pub description: String,
    /// Wait until every edge serves the new revision, showing progress.
    #[arg(long)]
    pub wait: bool,
    /// How long `--wait` waits before naming the edges that lag, in seconds.
    #[arg(long, default_value_t = 60)]
    pub wait_timeout: u64,
    #[command(flatten)]
    pub remote: Remote,
}

#[derive(Subcommand, Debug)]
pub enum ClusterCommand {
    /// Members, leader, term, commit and applied index, lag per member.
    Status(Remote),
    /// Every enrolled edge: region, status, revision, lag, last heartbeat, version.
    Edges(Remote),
}

#[derive(Args, Debug)]
pub struct EdgeRemoveArgs {
    /// The edge id (as `portico cluster edges` lists it).
    pub id: String,
    #[command(flatten)]
    pub remote: Remote,
}

#[derive(Subcommand, Debug)]
pub enum TokenCommand {
    /// Create an admin API token (role admin, viewer, join or edge); its secret is printed
    /// once. For role edge it prints the join token that `portico edge --join-token` takes.
    Create {
        name: String,
        #[arg(long, default_value = "viewer")]
        role: String,
        #[command(flatten)]
        remote: Remote,
    },
}

pub(crate) fn client(remote: &Remote) -> Result<AdminClient> {
    AdminClient::new(&remote.server, &remote.dev_data)
}

pub(crate) fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start a runtime")
}

pub fn apply(args: ApplyArgs) -> Result<()> {
    let text = std::fs::read(&args.file)
        .with_context(|| format!("cannot read {}", args.file.display()))?;
    let content_type = match args.file.extension().and_then(|e| e.to_str()) {
        Some("json") => "application/json",
        _ => "application/yaml",
    };
    let path = if args.dry_run {
        "/v1/apply?dry_run=true"
    } else {
        "/v1/apply"
    };
    let client = client(&args.remote)?;
    let answer =
        runtime()?.block_on(client.ok(Method::POST, path, content_type, Bytes::from(text)))?;
    if args.remote.output == Output::Json {
        return print_json(&answer);
    }
    let changes = answer["changes"].as_array().cloned().unwrap_or_default();
    for change in &changes {
        let (kind, id, action) = (
            str_of(&change["kind"]),
            str_of(&change["id"]),
            str_of(&change["action"]),
        );
        let mark = match action.as_str() {
            "create" => "+",
            "update" => "~",
            _ => "=",
        };
        println!("{mark} {kind} {id}: {action}");
        if action == "update" {
            print_diff(&change["before"], &change["after"]);
        }
    }
    let counts = |a: &str| changes.iter().filter(|c| c["action"] == a).count();
    let verb = if args.dry_run { "would be" } else { "were" };
    println!(
        "{} created, {} updated, {} unchanged {verb} applied{}",
        counts("create"),
        counts("update"),
        counts("unchanged"),
        if args.dry_run {
            " (dry run: nothing changed)".to_string()
        } else {
            format!("; revision {}", answer["revision"])
        }
    );
    Ok(())
}

fn print_diff(before: &Value, after: &Value) {
    let yaml = |v: &Value| serde_norway::to_string(v).unwrap_or_default();
    let (before, after) = (yaml(before), yaml(after));
    let diff = similar::TextDiff::from_lines(&before, &after);
    for group in diff.grouped_ops(2) {
        for op in group {
            for change in diff.iter_changes(&op) {
                let sign = match change.tag() {
                    similar::ChangeTag::Delete => "-",
                    similar::ChangeTag::Insert => "+",
                    similar::ChangeTag::Equal => " ",
                };
                print!("    {sign} {change}");
            }
        }
        println!("    ...");
    }
}

pub fn get(args: GetArgs) -> Result<()> {
    let client = client(&args.remote)?;
    let path = match (args.kind, &args.name) {
        (Kind::Apis, None) => "/v1/apis".to_string(),
        (Kind::Apis, Some(id)) => format!("/v1/apis/{id}"),
        (Kind::Deployments, Some(api)) => format!("/v1/apis/{api}/deployments"),
        (Kind::Deployments, None) => bail!("name the API: portico get deployments API"),
        (Kind::Tokens, _) => "/v1/tokens".to_string(),
    };
    let answer =
        runtime()?.block_on(client.ok(Method::GET, &path, "application/json", Bytes::new()))?;
    if args.remote.output == Output::Json {
        return print_json(&answer);
    }
    let items: Vec<Value> = match answer.get("items").and_then(Value::as_array) {
        Some(items) => items.clone(),
        None => vec![answer.clone()],
    };
    let rows: Vec<Vec<String>> = match args.kind {
        Kind::Apis => items
            .iter()
            .map(|i| {
                let api = &i["api"];
                let stages: Vec<String> = api["stages"]
                    .as_array()
                    .map(|s| {
                        s.iter()
                            .map(|s| match s["deployment"].as_str() {
                                Some(d) => format!("{}@{d}", str_of(&s["name"])),
                                None => str_of(&s["name"]),
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                vec![
                    str_of(&api["id"]),
                    str_of(&api["kind"]),
                    api["routes"].as_array().map_or(0, Vec::len).to_string(),
                    stages.join(","),
                    i["revision"].to_string(),
                ]
            })
            .collect(),
        Kind::Deployments => items
            .iter()
            .map(|i| {
                let d = &i["deployment"];
                vec![
                    str_of(&d["id"]),
                    str_of(&d["api"]),
                    d["snapshot"]["routes"]
                        .as_array()
                        .map_or(0, Vec::len)
                        .to_string(),
                    str_of(&d["description"]),
                    i["revision"].to_string(),
                ]
            })
            .collect(),
        Kind::Tokens => items
            .iter()
            .map(|t| vec![str_of(&t["id"]), str_of(&t["name"]), str_of(&t["role"])])
            .collect(),
    };
    let header: &[&str] = match args.kind {
        Kind::Apis => &["ID", "KIND", "ROUTES", "STAGES", "REVISION"],
        Kind::Deployments => &["ID", "API", "ROUTES", "DESCRIPTION", "REVISION"],
        Kind::Tokens => &["ID", "NAME", "ROLE"],
    };
    print_table(header, &rows);
    Ok(())
}

pub fn delete(args: DeleteArgs) -> Result<()> {
    let client = client(&args.remote)?;
    let path = match args.kind {
        Kind::Apis => format!("/v1/apis/{}", args.name),
        Kind::Tokens => format!("/v1/tokens/{}", args.name),
        Kind::Deployments => {
            bail!("deployments are immutable history and are deleted with their API")
        }
    };
    let rt = runtime()?;
    let answer = rt.block_on(async {
        match args.if_revision {
            None => {
                client
                    .ok(Method::DELETE, &path, "application/json", Bytes::new())
                    .await
            }
            Some(r) => client.ok_with_if_match(Method::DELETE, &path, r).await,
        }
    })?;
    if args.remote.output == Output::Json {
        return print_json(&answer);
    }
    println!("deleted {}; revision {}", args.name, answer["revision"]);
    Ok(())
}

pub fn deploy(args: DeployArgs) -> Result<()> {
    let client = client(&args.remote)?;
    let body = json!({"description": args.description, "stage": args.stage}).to_string();
    let path = format!("/v1/apis/{}/deployments", args.api);
    let answer = runtime()?.block_on(client.ok(
        Method::POST,
        &path,
        "application/json",
        Bytes::from(body),
    ))?;
    if args.remote.output == Output::Json && !args.wait {
        return print_json(&answer);
    }
    if args.remote.output == Output::Table {
        println!(
            "deployed {} as {} to stage {}; revision {}",
            args.api,
            str_of(&answer["deployment"]["id"]),
            args.stage,
            answer["revision"]
        );
    }
    if args.wait {
        let revision = answer["revision"]
            .as_u64()
            .context("the deploy answer has no revision")?;
        let timeout = std::time::Duration::from_secs(args.wait_timeout);
        runtime()?.block_on(crate::fleet::wait_for_edges(
            &client,
            revision,
            timeout,
            args.remote.output,
        ))?;
    }
    Ok(())
}

pub fn cluster(command: ClusterCommand) -> Result<()> {
    let remote = match command {
        ClusterCommand::Status(remote) => remote,
        ClusterCommand::Edges(remote) => return crate::fleet::edges(&remote),
    };
    let client = client(&remote)?;
    let answer = runtime()?.block_on(client.ok(
        Method::GET,
        "/v1/cluster/status",
        "application/json",
        Bytes::new(),
    ))?;
    if remote.output == Output::Json {
        return print_json(&answer);
    }
    println!(
        "cluster {}: leader {}, term {}, committed {}, applied {}",
        str_of(&answer["cluster"]),
        answer["leader"],
        answer["term"],
        answer["committed"],
        answer["applied"]
    );
    let rows: Vec<Vec<String>> = answer["members"]
        .as_array()
        .map(|m| {
            m.iter()
                .map(|m| {
                    vec![
                        m["id"].to_string(),
                        str_of(&m["role"]),
                        str_of(&m["raft_addr"]),
                        str_of(&m["admin_addr"]),
                        m["matched"].to_string(),
                        m["lag"].to_string(),
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    print_table(&["ID", "ROLE", "RAFT", "ADMIN", "MATCHED", "LAG"], &rows);
    Ok(())
}

pub fn token(command: TokenCommand) -> Result<()> {
    let TokenCommand::Create { name, role, remote } = command;
    let client = client(&remote)?;
    let body = json!({"name": name, "role": role}).to_string();
    let answer = runtime()?.block_on(client.ok(
        Method::POST,
        "/v1/tokens",
        "application/json",
        Bytes::from(body),
    ))?;
    if remote.output == Output::Json {
        return print_json(&answer);
    }
    if let Some(join) = answer["join_token"].as_str() {
        println!(
            "{join}\n(edge join token {} for {name}; it is shown only now. Start an edge with\n portico edge --control HOST:7443 --region REGION --join-token <the token above>)",
            str_of(&answer["id"])
        );
        return Ok(());
    }
    println!(
        "{}\n(token {} for {name}, role {role}; it is shown only now)",
        str_of(&answer["token"]),
        str_of(&answer["id"])
    );
    Ok(())
}

pub(crate) fn print_json(v: &Value) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

pub(crate) fn str_of(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".to_string(),
        other => other.to_string(),
    }
}

pub(crate) fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.len());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect();
        println!("{}", padded.join("  ").trim_end());
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}
