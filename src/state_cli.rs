//! `mobula list | get | summary | timeline | logs`: the CLI side of the state API
//! (`/api/v0/*`, what `ray list | get | summary | timeline | logs` read), a part of the
//! `mobula` binary. Rows print as a table (the default of `list`), as JSON, or as YAML-like
//! `key: value` text (the default of `get` and of `list --detail`), the way Ray's CLI prints
//! them. The head is found, and authenticated to, as `mobula job` does (`cli_target`).

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Subcommand, ValueEnum};
use mobula::web::client::{ClientError, WebClient};
use serde_json::Value;

use crate::cli_target::{Target, fail};

/// Largest `limit` the head accepts (`web::state::MAX_LIMIT`).
const MAX_LIMIT: usize = mobula::web::state::MAX_LIMIT;

/// Errors of the state CLI.
#[derive(Debug, thiserror::Error)]
pub enum StateCliError {
    /// The head could not be found.
    #[error("{0}")]
    Target(String),
    /// The head refused or could not be asked.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// A `--filter` that is neither `KEY=VALUE` nor `KEY!=VALUE`.
    #[error("bad --filter {0:?}: want KEY=VALUE or KEY!=VALUE")]
    BadFilter(String),
    /// Nothing has the id asked for.
    #[error("{0}")]
    NotFound(String),
    /// An id prefix that more than one row has.
    #[error("{0}")]
    Ambiguous(String),
    /// The timeline could not be written.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

type Res<T> = Result<T, StateCliError>;

/// What `list` and `get` show.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Resource {
    /// The cluster's nodes.
    Nodes,
    /// Actors, alive and dead.
    Actors,
    /// Task attempts (the nodes' recent history).
    Tasks,
    /// Jobs (drivers and submissions).
    Jobs,
    /// Objects in the nodes' stores.
    Objects,
    /// Placement groups.
    #[value(alias = "placement_groups")]
    PlacementGroups,
    /// Worker processes.
    Workers,
}

impl Resource {
    /// Its name in `/api/v0/{name}`.
    fn path(self) -> &'static str {
        match self {
            Self::Nodes => "nodes",
            Self::Actors => "actors",
            Self::Tasks => "tasks",
            Self::Jobs => "jobs",
            Self::Objects => "objects",
            Self::PlacementGroups => "placement_groups",
            Self::Workers => "workers",
        }
    }

    /// The fields an id given to `get` is matched against.
    fn id_keys(self) -> &'static [&'static str] {
        match self {
            Self::Nodes => &["node_id"],
            Self::Actors => &["actor_id"],
            Self::Tasks => &["task_id"],
            Self::Jobs => &["submission_id", "job_id"],
            Self::Objects => &["object_id"],
            Self::PlacementGroups => &["placement_group_id"],
            Self::Workers => &["worker_id"],
        }
    }

    fn label(self) -> String {
        self.path().replace('_', " ")
    }
}

/// How `list` and `get` print rows.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Format {
    /// Aligned columns.
    Table,
    /// Pretty JSON.
    Json,
    /// `key: value` lines, nested by indentation.
    Yaml,
}

/// What `summary` summarizes.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Summarized {
    /// Tasks by function: type and counts per state.
    Tasks,
    /// Actors by class: counts per state.
    Actors,
    /// Objects: counts and sizes.
    Objects,
}

impl Summarized {
    fn path(self) -> &'static str {
        match self {
            Self::Tasks => "tasks",
            Self::Actors => "actors",
            Self::Objects => "objects",
        }
    }
}

/// How `summary` prints.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum SummaryFormat {
    /// A table per group, with the totals.
    Table,
    /// The summary as pretty JSON.
    Json,
}

/// The state commands (top-level subcommands of `mobula`).
#[derive(Subcommand)]
pub enum StateCommand {
    /// Lists nodes, actors, tasks, jobs, objects, placement groups or workers (like `ray list`).
    List {
        #[command(flatten)]
        target: Target,
        /// What to list.
        resource: Resource,
        /// `KEY=VALUE` or `KEY!=VALUE` (repeatable, ANDed), e.g. `--filter state=ALIVE`.
        #[arg(long = "filter", short = 'f')]
        filters: Vec<String>,
        /// Rows shown at most (the head allows up to 10000).
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Every field of each row (printed as yaml unless --format says otherwise).
        #[arg(long)]
        detail: bool,
        /// Output format (default: table, or yaml with --detail).
        #[arg(long, value_enum)]
        format: Option<Format>,
    },
    /// Shows one node, actor, task, job, object, placement group or worker by id (a unique
    /// prefix is enough), with every field (like `ray get`).
    Get {
        #[command(flatten)]
        target: Target,
        /// What it is.
        resource: Resource,
        /// Its id, or the start of it.
        id: String,
        /// Output format.
        #[arg(long, value_enum, default_value = "yaml")]
        format: Format,
    },
    /// Summarizes tasks, actors or objects (like `ray summary`).
    Summary {
        #[command(flatten)]
        target: Target,
        /// What to summarize.
        what: Summarized,
        /// Output format.
        #[arg(long, value_enum, default_value = "table")]
        format: SummaryFormat,
    },
    /// Writes the tasks' Chrome-trace timeline (like `ray timeline`) for chrome://tracing or
    /// ui.perfetto.dev.
    Timeline {
        #[command(flatten)]
        target: Target,
        /// The file to write (default: timeline-<time>.json here).
        #[arg(long, short = 'o')]
        output: Option<PathBuf>,
        /// Only this job's tasks.
        #[arg(long)]
        job_id: Option<String>,
    },
    /// Lists a node's log files, or prints the end of one (like `ray logs`).
    Logs {
        #[command(flatten)]
        target: Target,
        /// The node (an id or a unique prefix; default: the head).
        #[arg(long, conflicts_with = "node_ip")]
        node_id: Option<String>,
        /// The node, by its address.
        #[arg(long)]
        node_ip: Option<String>,
        /// The file to print (a `*` / `?` glob lists the files it matches instead).
        filename: Option<String>,
        /// Lines from the end (-1: the whole file).
        #[arg(long, default_value_t = 1000, allow_negative_numbers = true)]
        tail: i64,
        /// Prints a submitted job's driver log instead.
        #[arg(long, conflicts_with_all = ["node_id", "node_ip", "filename"])]
        submission_id: Option<String>,
    },
}

/// Runs one state command.
pub fn run(cmd: StateCommand) -> ExitCode {
    match try_run(cmd) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(e),
    }
}

fn try_run(cmd: StateCommand) -> Res<()> {
    let client = |t: &Target| t.client().map_err(StateCliError::Target);
    match cmd {
        StateCommand::List {
            target,
            resource,
            filters,
            limit,
            detail,
            format,
        } => list(&client(&target)?, resource, &filters, limit, detail, format),
        StateCommand::Get {
            target,
            resource,
            id,
            format,
        } => get(&client(&target)?, resource, &id, format),
        StateCommand::Summary {
            target,
            what,
            format,
        } => summary(&client(&target)?, what, format),
        StateCommand::Timeline {
            target,
            output,
            job_id,
        } => timeline(&client(&target)?, output, job_id.as_deref()),
        StateCommand::Logs {
            target,
            node_id,
            node_ip,
            filename,
            tail,
            submission_id,
        } => {
            let c = client(&target)?;
            let lines = tail.to_string();
            if let Some(sid) = submission_id {
                let q = [("submission_id", sid.as_str()), ("lines", &lines)];
                print_text(&c.get_query("/api/v0/logs/file", &q)?);
                return Ok(());
            }
            let node = match &node_ip {
                Some(ip) => ("node_ip", ip.clone()),
                None => ("node_id", node_of(&c, node_id.as_deref())?),
            };
            match filename {
                Some(f) if !f.contains(['*', '?']) => {
                    let q = [
                        (node.0, node.1.as_str()),
                        ("filename", &f),
                        ("lines", &lines),
                    ];
                    print_text(&c.get_query("/api/v0/logs/file", &q)?);
                    Ok(())
                }
                glob => log_listing(&c, node, glob.as_deref().unwrap_or("*")),
            }
        }
    }
}

/// `KEY=VALUE` or `KEY!=VALUE` as `(key, predicate, value)`.
fn parse_filter(f: &str) -> Res<(String, &'static str, String)> {
    let eq = f
        .find('=')
        .ok_or_else(|| StateCliError::BadFilter(f.to_string()))?;
    let (key_end, pred) = match f[..eq].strip_suffix('!') {
        Some(k) => (k.len(), "!="),
        None => (eq, "="),
    };
    let key = f[..key_end].trim();
    if key.is_empty() {
        return Err(StateCliError::BadFilter(f.to_string()));
    }
    Ok((key.to_string(), pred, f[eq + 1..].trim().to_string()))
}

/// Rows of a list answer, after printing its partial-failure warning.
fn rows_of(data: &Value) -> Res<Vec<Value>> {
    if let Some(w) = data["partial_failure_warning"]
        .as_str()
        .filter(|w| !w.is_empty())
    {
        eprintln!("mobula: warning: {w}");
    }
    match &data["result"] {
        Value::Array(rows) => Ok(rows.clone()),
        other => Err(ClientError::Malformed(format!("no rows in {other}")).into()),
    }
}

/// One `/api/v0/{resource}` page.
fn fetch(
    c: &WebClient,
    r: Resource,
    filters: &[(String, &str, String)],
    limit: usize,
    detail: bool,
) -> Res<Value> {
    let limit = limit.to_string();
    let mut q: Vec<(&str, &str)> = vec![
        ("limit", &limit),
        ("detail", if detail { "true" } else { "false" }),
    ];
    for (k, p, v) in filters {
        q.extend([("filter_keys", k.as_str()), ("filter_predicates", p)]);
        q.push(("filter_values", v));
    }
    tracing::debug!(resource = r.path(), ?q, "state query");
    Ok(c.state(&format!("/api/v0/{}", r.path()), &q)?)
}

fn list(
    c: &WebClient,
    r: Resource,
    filters: &[String],
    limit: usize,
    detail: bool,
    format: Option<Format>,
) -> Res<()> {
    let filters = filters
        .iter()
        .map(|f| parse_filter(f))
        .collect::<Res<Vec<_>>>()?;
    let data = fetch(c, r, &filters, limit, detail)?;
    let rows = rows_of(&data)?;
    let count = |k: &str| data[k].as_u64().unwrap_or(0);
    let (shown, matched, total) = (rows.len() as u64, count("num_filtered"), count("total"));
    let trailer = (shown < matched).then(|| {
        format!(
            "{shown} rows shown of {matched} matching ({total} in the cluster): raise --limit \
             (at most {MAX_LIMIT}) or add --filter to see the others."
        )
    });
    match format.unwrap_or(if detail { Format::Yaml } else { Format::Table }) {
        Format::Table => {
            let rule = "-".repeat(30);
            println!(
                "======== List: {} ========\nStats:\n{rule}\nTotal: {shown}\n\nTable:\n{rule}",
                mobula::cluster::utc_now()
            );
            print!("{}", row_table(&rows));
            if let Some(t) = trailer {
                println!("\n{t}");
            }
            return Ok(());
        }
        Format::Json => println!("{}", pretty(&Value::Array(rows))),
        Format::Yaml => print!("{}", yaml(&Value::Array(rows))),
    }
    if let Some(t) = trailer {
        eprintln!("mobula: {t}");
    }
    Ok(())
}

fn get(c: &WebClient, r: Resource, id: &str, format: Format) -> Res<()> {
    let mut rows = Vec::new();
    for key in r.id_keys() {
        let f = [(key.to_string(), "=", id.to_string())];
        rows = rows_of(&fetch(c, r, &f, MAX_LIMIT, true)?)?;
        if !rows.is_empty() {
            break;
        }
    }
    let id_of = |row: &Value| {
        r.id_keys()
            .iter()
            .find_map(|k| row[*k].as_str().map(str::to_ascii_lowercase))
            .unwrap_or_default()
    };
    if rows.is_empty() {
        let want = id.to_ascii_lowercase();
        rows = rows_of(&fetch(c, r, &[], MAX_LIMIT, true)?)?
            .into_iter()
            .filter(|row| {
                r.id_keys().iter().any(|k| {
                    row[*k]
                        .as_str()
                        .is_some_and(|v| v.to_ascii_lowercase().starts_with(&want))
                })
            })
            .collect();
    }
    let ids: BTreeSet<String> = rows.iter().map(id_of).collect();
    match ids.len() {
        0 => {
            return Err(StateCliError::NotFound(format!(
                "no {} with id {id} in the cluster",
                r.label()
            )));
        }
        1 => {}
        _ => {
            return Err(StateCliError::Ambiguous(format!(
                "{id} is the start of {} {} ids: {}",
                ids.len(),
                r.label(),
                ids.into_iter().collect::<Vec<_>>().join(", ")
            )));
        }
    }
    // A task's attempts share its id: all of them print.
    let v = match rows.len() {
        1 => rows.remove(0),
        _ => Value::Array(rows),
    };
    match format {
        Format::Json => println!("{}", pretty(&v)),
        Format::Yaml | Format::Table => print!("{}", yaml(&v)),
    }
    Ok(())
}

fn summary(c: &WebClient, what: Summarized, format: SummaryFormat) -> Res<()> {
    let data = c.state(&format!("/api/v0/{}/summarize", what.path()), &[])?;
    rows_of(&serde_json::json!({
        "partial_failure_warning": data["partial_failure_warning"],
        "result": [],
    }))?;
    let s = &data["result"]["node_id_to_summary"]["cluster"];
    if !s.is_object() {
        return Err(ClientError::Malformed(format!("no summary in {data}")).into());
    }
    if let SummaryFormat::Json = format {
        println!("{}", pretty(s));
        return Ok(());
    }
    let rule = "-".repeat(36);
    let title = match what {
        Summarized::Tasks => "Tasks",
        Summarized::Actors => "Actors",
        Summarized::Objects => "Objects",
    };
    println!(
        "======== {title} Summary: {} ========\nStats:\n{rule}",
        mobula::cluster::utc_now()
    );
    if let Value::Object(m) = s {
        for (k, v) in m
            .iter()
            .filter(|(k, v)| k.starts_with("total") && !v.is_object())
        {
            println!("{k}: {}", cell(v));
        }
    }
    println!(
        "\nTable (group by {}):\n{rule}",
        s["summary_by"].as_str().unwrap_or("?")
    );
    print!("{}", summary_table(&s["summary"], s["summary_by"].as_str()));
    Ok(())
}

/// A summary's groups as a table: each group's scalar fields, a column per state of its
/// `state_counts`, other counts as `k: n` lists; a `TOTAL` row sums the state columns. A
/// group whose fields do not name it gets a first column (`by`, e.g. `callsite`) that does.
fn summary_table(groups: &Value, by: Option<&str>) -> String {
    let Value::Object(groups) = groups else {
        return String::new();
    };
    let mut states: Vec<String> = groups
        .values()
        .filter_map(|g| g["state_counts"].as_object())
        .flat_map(|m| m.keys().cloned())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    states.sort_by_key(|s| mobula::actors::history::TaskState::rank_of(s));
    let named = groups
        .iter()
        .all(|(k, g)| g.as_object().is_some_and(|m| m.values().any(|v| v == k)));
    let mut headers: Vec<String> = Vec::new();
    for g in groups.values() {
        if let Value::Object(m) = g {
            for k in m.keys().filter(|k| *k != "state_counts") {
                if !headers.contains(k) {
                    headers.push(k.clone());
                }
            }
        }
    }
    let mut rows: Vec<Vec<String>> = Vec::new();
    let mut totals = vec![0u64; states.len()];
    for (name, g) in groups {
        let mut row: Vec<String> = headers.iter().map(|h| cell(&g[h.as_str()])).collect();
        if !named {
            row.insert(0, name.clone());
        }
        for (i, s) in states.iter().enumerate() {
            let n = g["state_counts"][s.as_str()].as_u64().unwrap_or(0);
            totals[i] += n;
            row.push(if n > 0 { n.to_string() } else { String::new() });
        }
        rows.push(row);
    }
    if !named {
        headers.insert(0, by.unwrap_or("group").to_string());
    }
    if !states.is_empty() {
        let mut total = vec![String::new(); headers.len().max(1)];
        total[0] = "TOTAL".to_string();
        total.extend(totals.iter().map(u64::to_string));
        rows.push(total);
    }
    headers.extend(states);
    table(&headers, &rows, false)
}

fn timeline(c: &WebClient, output: Option<PathBuf>, job: Option<&str>) -> Res<()> {
    let mut q = vec![("download", "1")];
    if let Some(j) = job {
        q.push(("job_id", j));
    }
    let body = c.get_query("/api/v0/tasks/timeline", &q)?;
    let n = serde_json::from_str::<Value>(&body)
        .ok()
        .and_then(|v| v.as_array().map(Vec::len))
        .ok_or_else(|| ClientError::Malformed(format!("not a trace: {body:.200}")))?;
    let path = output.unwrap_or_else(|| {
        let t = mobula::cluster::utc_now()
            .replace(' ', "_")
            .replace(':', "-");
        PathBuf::from(format!("timeline-{t}.json"))
    });
    std::fs::write(&path, body).map_err(|source| StateCliError::Write {
        path: path.clone(),
        source,
    })?;
    println!(
        "Trace file written to {} ({n} task events).",
        path.display()
    );
    println!(
        "Open it in Chrome at chrome://tracing (Load), or at https://ui.perfetto.dev (Open trace file)."
    );
    Ok(())
}

/// The id of the node `id` names (a unique prefix is enough), or the head's.
fn node_of(c: &WebClient, id: Option<&str>) -> Res<String> {
    let nodes = rows_of(&fetch(c, Resource::Nodes, &[], MAX_LIMIT, false)?)?;
    let found: Vec<&str> = nodes
        .iter()
        .filter(|n| match id {
            Some(id) => n["node_id"]
                .as_str()
                .is_some_and(|v| v.to_ascii_lowercase().starts_with(&id.to_ascii_lowercase())),
            None => n["is_head_node"] == Value::Bool(true),
        })
        .filter_map(|n| n["node_id"].as_str())
        .collect();
    match (found.as_slice(), id) {
        ([one], _) => Ok(one.to_string()),
        ([], Some(id)) => Err(StateCliError::NotFound(format!(
            "no node with id {id} in the cluster"
        ))),
        ([], None) => Err(StateCliError::NotFound(
            "the cluster lists no head node".to_string(),
        )),
        (many, _) => Err(StateCliError::Ambiguous(format!(
            "{} is the start of {} node ids: {}",
            id.unwrap_or_default(),
            many.len(),
            many.join(", ")
        ))),
    }
}

fn log_listing(c: &WebClient, node: (&str, String), glob: &str) -> Res<()> {
    let q = [(node.0, node.1.as_str()), ("glob", glob)];
    let cats = c.state("/api/v0/logs", &q)?;
    let Value::Object(cats) = cats else {
        return Err(ClientError::Malformed(format!("not a log listing: {cats}")).into());
    };
    println!("Log files of node {}:", node.1);
    for (cat, files) in cats {
        let files: Vec<&str> = files
            .as_array()
            .map(|f| f.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        if files.is_empty() {
            continue;
        }
        println!("{cat}:");
        for f in files {
            println!("  {f}");
        }
    }
    Ok(())
}

/// Prints a log's text, ending in a newline.
fn print_text(t: &str) {
    print!("{t}");
    if !t.is_empty() && !t.ends_with('\n') {
        println!();
    }
}

fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
}

/// A value as one table cell: strings as they are, nothing for null, a map of scalars as
/// `k: v, ...`, JSON otherwise.
fn cell(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.replace('\n', " "),
        Value::Object(m) if m.values().all(|v| !is_block(v)) => m
            .iter()
            .map(|(k, v)| format!("{k}: {}", cell(v)))
            .collect::<Vec<_>>()
            .join(", "),
        other => other.to_string(),
    }
}

/// Rows as a table: a column per key (in the order the rows first have them), an index
/// column first, as `ray list` prints.
fn row_table(rows: &[Value]) -> String {
    let mut headers: Vec<String> = Vec::new();
    for r in rows {
        if let Value::Object(m) = r {
            for k in m.keys() {
                if !headers.contains(k) {
                    headers.push(k.clone());
                }
            }
        }
    }
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| headers.iter().map(|h| cell(&r[h.as_str()])).collect())
        .collect();
    table(&headers, &cells, true)
}

/// Aligned columns with upper-case headers, optionally numbered.
fn table(headers: &[String], rows: &[Vec<String>], numbered: bool) -> String {
    let mut lines: Vec<Vec<String>> = Vec::with_capacity(rows.len() + 1);
    let index = |i: Option<usize>| match (numbered, i) {
        (false, _) => None,
        (true, None) => Some(String::new()),
        (true, Some(i)) => Some(i.to_string()),
    };
    lines.push(
        index(None)
            .into_iter()
            .chain(headers.iter().map(|h| h.to_uppercase()))
            .collect(),
    );
    for (i, r) in rows.iter().enumerate() {
        lines.push(
            index(Some(i))
                .into_iter()
                .chain(r.iter().cloned())
                .collect(),
        );
    }
    let cols = lines.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            lines
                .iter()
                .filter_map(|l| l.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for l in lines {
        let mut line = String::new();
        for (c, s) in l.iter().enumerate() {
            line.push_str(s);
            let pad = widths[c] - s.chars().count();
            if c + 1 < l.len() {
                line.push_str(&" ".repeat(pad + 2));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// A value as YAML-like text (what `ray get` prints): `key: value`, nested maps indented,
/// lists as `- item`; strings quoted only when they would read as something else.
fn yaml(v: &Value) -> String {
    let mut out = String::new();
    yaml_into(v, 0, &mut out);
    out
}

fn yaml_into(v: &Value, indent: usize, out: &mut String) {
    let pad = " ".repeat(indent);
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, val) in m {
                if is_block(val) {
                    out.push_str(&format!("{pad}{k}:\n"));
                    yaml_into(val, indent + 2, out);
                } else {
                    out.push_str(&format!("{pad}{k}: {}\n", scalar(val)));
                }
            }
        }
        Value::Array(items) if !items.is_empty() => {
            for item in items {
                if is_block(item) {
                    // The item's first line carries the dash.
                    let mut sub = String::new();
                    yaml_into(item, indent + 2, &mut sub);
                    out.push_str(&pad);
                    out.push_str("- ");
                    out.push_str(&sub[indent + 2..]);
                } else {
                    out.push_str(&format!("{pad}- {}\n", scalar(item)));
                }
            }
        }
        other => out.push_str(&format!("{pad}{}\n", scalar(other))),
    }
}

fn is_block(v: &Value) -> bool {
    match v {
        Value::Object(m) => !m.is_empty(),
        Value::Array(a) => !a.is_empty(),
        _ => false,
    }
}

fn scalar(v: &Value) -> String {
    match v {
        Value::Object(_) => "{}".to_string(),
        Value::Array(_) => "[]".to_string(),
        Value::String(s) => {
            let plain = !s.is_empty()
                && s.trim() == s
                && !s.contains(['\n', '#', '"', '\''])
                && !s.contains(": ")
                && !s.starts_with([
                    '-', '[', '{', '*', '&', '!', '|', '>', '%', '@', '`', '?', ':',
                ])
                && s.parse::<f64>().is_err()
                && !matches!(
                    s.to_ascii_lowercase().as_str(),
                    "true" | "false" | "null" | "yes" | "no" | "on" | "off" | "~"
                );
            if plain {
                s.clone()
            } else {
                Value::from(s.as_str()).to_string()
            }
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn filters_parse() {
        assert_eq!(
            parse_filter("state=ALIVE").ok(),
            Some(("state".to_string(), "=", "ALIVE".to_string()))
        );
        assert_eq!(
            parse_filter("name != a=b").ok(),
            Some(("name".to_string(), "!=", "a=b".to_string()))
        );
        assert!(parse_filter("state").is_err());
        assert!(parse_filter("=x").is_err());
    }

    #[test]
    fn yaml_nests_and_quotes() {
        let v = json!({"a": "x", "n": 1, "e": "", "m": {"k": [1, {"p": "true", "q": null}]},
            "l": []});
        assert_eq!(
            yaml(&v),
            "a: x\nn: 1\ne: \"\"\nm:\n  k:\n    - 1\n    - p: \"true\"\n      q: null\nl: []\n"
        );
    }

    #[test]
    fn tables_align() {
        let rows = vec![
            json!({"id": "a", "state": "ALIVE"}),
            json!({"id": "bbb", "x": 1}),
        ];
        assert_eq!(
            row_table(&rows),
            "   ID   STATE  X\n0  a    ALIVE\n1  bbb         1\n"
        );
        let s = json!({"f": {"func_or_class_name": "f", "type": "NORMAL_TASK",
            "state_counts": {"FINISHED": 2, "RUNNING": 1}}});
        let t = summary_table(&s, Some("func_name"));
        assert!(
            t.starts_with("FUNC_OR_CLASS_NAME  TYPE         RUNNING  FINISHED\n"),
            "{t}"
        );
        assert!(
            t.ends_with("TOTAL                            1        2\n"),
            "{t}"
        );
        let o =
            json!({"disabled": {"total_objects": 2, "ref_type_counts": {"LOCAL_REFERENCE": 2}}});
        assert_eq!(
            summary_table(&o, Some("callsite")),
            "CALLSITE  TOTAL_OBJECTS  REF_TYPE_COUNTS\ndisabled  2              LOCAL_REFERENCE: 2\n"
        );
    }
}
