//! `mobula job submit | status | logs | stop | list | delete`: the CLI side of the Jobs API
//! (a part of the `mobula` binary, not of the library).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Subcommand;
use mobula::web::client::{ClientError, WebClient};

use crate::cli_target::{Target, fail};
use serde_json::{Value, json};

#[derive(Subcommand)]
pub enum JobCommand {
    /// Submits a job and follows its logs until it ends (exit 1 if it failed).
    Submit {
        #[command(flatten)]
        target: Target,
        /// A directory uploaded and used as the job's working directory.
        #[arg(long)]
        working_dir: Option<PathBuf>,
        /// The job's id (default: generated).
        #[arg(long)]
        submission_id: Option<String>,
        /// Metadata as a JSON object of strings.
        #[arg(long)]
        metadata_json: Option<String>,
        /// A runtime environment as JSON (`env_vars`, `working_dir`).
        #[arg(long)]
        runtime_env_json: Option<String>,
        /// CPUs the entrypoint needs.
        #[arg(long)]
        entrypoint_num_cpus: Option<f64>,
        /// GPUs the entrypoint needs.
        #[arg(long)]
        entrypoint_num_gpus: Option<f64>,
        /// Memory (bytes) the entrypoint needs.
        #[arg(long)]
        entrypoint_memory: Option<u64>,
        /// Custom resources the entrypoint needs, as JSON.
        #[arg(long)]
        entrypoint_resources: Option<String>,
        /// Return once submitted.
        #[arg(long)]
        no_wait: bool,
        /// The entrypoint command.
        #[arg(last = true, required = true)]
        entrypoint: Vec<String>,
    },
    /// Prints a job's status.
    Status {
        #[command(flatten)]
        target: Target,
        /// Submission or job id.
        id: String,
    },
    /// Prints a job's logs (`-f`: follows them until the job ends).
    Logs {
        #[command(flatten)]
        target: Target,
        /// Submission or job id.
        id: String,
        /// Follow.
        #[arg(short, long)]
        follow: bool,
    },
    /// Stops a job (waits until it has stopped unless --no-wait).
    Stop {
        #[command(flatten)]
        target: Target,
        /// Submission or job id.
        id: String,
        /// Return at once.
        #[arg(long)]
        no_wait: bool,
    },
    /// Lists the jobs.
    List {
        #[command(flatten)]
        target: Target,
    },
    /// Deletes an ended job and its logs.
    Delete {
        #[command(flatten)]
        target: Target,
        /// Submission or job id.
        id: String,
    },
}

fn terminal(status: &str) -> bool {
    matches!(status, "SUCCEEDED" | "FAILED" | "STOPPED")
}

/// Waits for a job to leave PENDING, with a spinner.
fn await_start(c: &WebClient, sid: &str) -> Result<(), ClientError> {
    let spinner = indicatif::ProgressBar::new_spinner();
    spinner.set_message(format!("waiting for job '{sid}' to start"));
    spinner.enable_steady_tick(Duration::from_millis(100));
    let result = loop {
        match c.job(sid) {
            Ok(v) if v["status"] != "PENDING" => break Ok(()),
            Ok(_) => std::thread::sleep(Duration::from_millis(200)),
            Err(e) => break Err(e),
        }
    };
    spinner.finish_and_clear();
    result
}

/// Prints how a job ended; exit 1 if it failed.
fn report_end(c: &WebClient, sid: &str) -> ExitCode {
    let v = match c.job(sid) {
        Ok(v) => v,
        Err(e) => return fail(e),
    };
    let status = v["status"].as_str().unwrap_or("");
    match status {
        "SUCCEEDED" => {
            println!("Job '{sid}' succeeded");
            ExitCode::SUCCESS
        }
        "STOPPED" => {
            println!("Job '{sid}' was stopped");
            ExitCode::SUCCESS
        }
        _ => {
            println!("Job '{sid}' failed");
            if let Some(m) = v["message"].as_str() {
                println!("Status message: {m}");
            }
            ExitCode::FAILURE
        }
    }
}

fn follow(c: &WebClient, sid: &str) -> Result<(), ClientError> {
    use std::io::Write;
    c.tail(sid, |t| {
        let mut out = std::io::stdout();
        let _ = out.write_all(t.as_bytes());
        let _ = out.flush();
    })
}

fn parse_json(flag: &str, text: &Option<String>) -> Result<Option<Value>, String> {
    text.as_deref()
        .map(|t| serde_json::from_str(t).map_err(|e| format!("{flag} is not JSON: {e}")))
        .transpose()
}

impl JobCommand {
    fn target(&self) -> &Target {
        match self {
            Self::Submit { target, .. }
            | Self::Status { target, .. }
            | Self::Logs { target, .. }
            | Self::Stop { target, .. }
            | Self::List { target }
            | Self::Delete { target, .. } => target,
        }
    }
}

/// Runs one `mobula job` command.
pub fn run(cmd: JobCommand) -> ExitCode {
    let c = match cmd.target().client() {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    match cmd {
        JobCommand::Submit {
            target: _,
            working_dir,
            submission_id,
            metadata_json,
            runtime_env_json,
            entrypoint_num_cpus,
            entrypoint_num_gpus,
            entrypoint_memory,
            entrypoint_resources,
            no_wait,
            entrypoint,
        } => {
            let (metadata, mut runtime_env, resources) = match (
                parse_json("--metadata-json", &metadata_json),
                parse_json("--runtime-env-json", &runtime_env_json),
                parse_json("--entrypoint-resources", &entrypoint_resources),
            ) {
                (Ok(m), Ok(r), Ok(res)) => (m, r.unwrap_or_else(|| json!({})), res),
                (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => return fail(e),
            };
            if let Some(dir) = &working_dir {
                match c.upload_working_dir(dir) {
                    Ok(uri) => runtime_env["working_dir"] = json!(uri),
                    Err(e) => return fail(e),
                }
            }
            let line = entrypoint
                .iter()
                .map(|a| shell_quote(a))
                .collect::<Vec<_>>()
                .join(" ");
            let mut req = json!({ "entrypoint": line, "runtime_env": runtime_env, "metadata": metadata.unwrap_or_else(|| json!({})) });
            for (k, v) in [
                ("submission_id", submission_id.map(Value::from)),
                ("entrypoint_num_cpus", entrypoint_num_cpus.map(Value::from)),
                ("entrypoint_num_gpus", entrypoint_num_gpus.map(Value::from)),
                ("entrypoint_memory", entrypoint_memory.map(Value::from)),
                ("entrypoint_resources", resources),
            ] {
                if let Some(v) = v {
                    req[k] = v;
                }
            }
            let sid = match c.submit(&req) {
                Ok(s) => s,
                Err(e) => return fail(e),
            };
            println!("Job '{sid}' submitted successfully");
            if no_wait {
                println!(
                    "Query the status with `mobula job status {sid}`, the logs with `mobula job logs {sid} -f`."
                );
                return ExitCode::SUCCESS;
            }
            if let Err(e) = await_start(&c, &sid).and_then(|()| follow(&c, &sid)) {
                return fail(e);
            }
            report_end(&c, &sid)
        }
        JobCommand::Status { target: _, id } => match c.job(&id) {
            Ok(v) => {
                println!(
                    "Status for job '{id}': {}",
                    v["status"].as_str().unwrap_or("?")
                );
                if let Some(m) = v["message"].as_str() {
                    println!("Status message: {m}");
                }
                ExitCode::SUCCESS
            }
            Err(e) => fail(e),
        },
        JobCommand::Logs {
            target: _,
            id,
            follow: f,
        } => {
            let r = if f {
                follow(&c, &id)
            } else {
                c.logs(&id).map(|t| print!("{t}"))
            };
            match r {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(e),
            }
        }
        JobCommand::Stop {
            target: _,
            id,
            no_wait,
        } => {
            match c.stop(&id) {
                Ok(true) => println!("Attempting to stop job '{id}'"),
                Ok(false) => {
                    println!("Job '{id}' has already ended");
                    return ExitCode::SUCCESS;
                }
                Err(e) => return fail(e),
            }
            if no_wait {
                return ExitCode::SUCCESS;
            }
            loop {
                match c.job(&id) {
                    Ok(v) if terminal(v["status"].as_str().unwrap_or("")) => {
                        println!(
                            "Job '{id}' has {}",
                            v["status"].as_str().unwrap_or("").to_lowercase()
                        );
                        return ExitCode::SUCCESS;
                    }
                    Ok(_) => std::thread::sleep(Duration::from_millis(250)),
                    Err(e) => return fail(e),
                }
            }
        }
        JobCommand::List { target: _ } => match c.list() {
            Ok(jobs) => {
                println!(
                    "{:<28} {:<34} {:<10} {:<14} ENTRYPOINT",
                    "SUBMISSION_ID", "JOB_ID", "TYPE", "STATUS"
                );
                for j in jobs {
                    println!(
                        "{:<28} {:<34} {:<10} {:<14} {}",
                        j["submission_id"].as_str().unwrap_or("-"),
                        j["job_id"].as_str().unwrap_or("-"),
                        j["type"].as_str().unwrap_or("-"),
                        j["status"].as_str().unwrap_or("-"),
                        j["entrypoint"].as_str().unwrap_or("")
                    );
                }
                ExitCode::SUCCESS
            }
            Err(e) => fail(e),
        },
        JobCommand::Delete { target: _, id } => match c.delete(&id) {
            Ok(_) => {
                println!("Job '{id}' deleted successfully");
                ExitCode::SUCCESS
            }
            Err(e) => fail(e),
        },
    }
}

/// Quotes an argument for `sh` (as Python's `shlex.quote`).
fn shell_quote(a: &str) -> String {
    if !a.is_empty()
        && a.chars()
            .all(|c| c.is_ascii_alphanumeric() || "@%+=:,./-_".contains(c))
    {
        a.to_string()
    } else {
        format!("'{}'", a.replace('\'', "'\"'\"'"))
    }
}
