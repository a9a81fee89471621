//! The one place that spawns commands (`systemctl`, `nix-env`, …).
//!
//! Every command is built as a [`Cmd`], logged, and run through [`Runner`]; failures carry the
//! argv, the exit status and stderr. Tests put recording stand-ins for these programs first on
//! `PATH`; the product has no test-only branches.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cmd {
    pub program: String,
    pub args: Vec<String>,
}

impl Cmd {
    pub fn new(program: &str, args: &[&str]) -> Self {
        Cmd {
            program: program.to_string(),
            args: args.iter().map(|a| a.to_string()).collect(),
        }
    }

    pub fn display(&self) -> String {
        let mut s = self.program.clone();
        for a in &self.args {
            s.push(' ');
            s.push_str(a);
        }
        s
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CmdOutput {
    /// `None` when killed by a signal.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot run `{cmd}`: {source}")]
    Spawn {
        cmd: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{cmd}` failed ({status}): {stderr}")]
    Failed {
        cmd: String,
        status: String,
        stderr: String,
    },
}

impl RunError {
    /// The program is not installed (as opposed to failing).
    pub fn is_not_found(&self) -> bool {
        matches!(self, RunError::Spawn { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
    }
}

#[derive(Clone, Debug, Default)]
pub struct Runner {
    /// Log each command to stderr before running it.
    pub verbose: bool,
}

impl Runner {
    /// Run and capture; a non-zero exit is returned as data, not as an error.
    pub fn output(&self, cmd: &Cmd) -> Result<CmdOutput, RunError> {
        if self.verbose {
            eprintln!("+ {}", cmd.display());
        }
        let out = Command::new(&cmd.program)
            .args(&cmd.args)
            .stdin(Stdio::null())
            .output()
            .map_err(|source| RunError::Spawn {
                cmd: cmd.display(),
                source,
            })?;
        Ok(CmdOutput {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }

    /// [`Runner::output`] with a time limit: past `limit` the command is killed and the result
    /// has no exit code (`code: None`), as for any command killed by a signal.
    pub fn output_timeout(&self, cmd: &Cmd, limit: Duration) -> Result<CmdOutput, RunError> {
        if self.verbose {
            eprintln!("+ {} (time limit {} s)", cmd.display(), limit.as_secs());
        }
        let spawn_err = |source| RunError::Spawn {
            cmd: cmd.display(),
            source,
        };
        let mut child = Command::new(&cmd.program)
            .args(&cmd.args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(spawn_err)?;
        // Drain both pipes while waiting, so a chatty command cannot block on a full pipe.
        let mut out_pipe = child.stdout.take();
        let mut err_pipe = child.stderr.take();
        let out_reader = std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(p) = out_pipe.as_mut() {
                let _ = std::io::Read::read_to_end(p, &mut buf);
            }
            buf
        });
        let err_reader = std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(p) = err_pipe.as_mut() {
                let _ = std::io::Read::read_to_end(p, &mut buf);
            }
            buf
        });
        let start = Instant::now();
        let status = loop {
            match child.try_wait().map_err(spawn_err)? {
                Some(st) => break Some(st),
                None if start.elapsed() >= limit => {
                    // Ours to end: the child we spawned, by its id.
                    let _ = child.kill();
                    let _ = child.wait();
                    break None;
                }
                None => std::thread::sleep(Duration::from_millis(20)),
            }
        };
        let stdout = out_reader.join().unwrap_or_default();
        let stderr = err_reader.join().unwrap_or_default();
        Ok(CmdOutput {
            code: status.and_then(|s| s.code()),
            stdout: String::from_utf8_lossy(&stdout).into_owned(),
            stderr: String::from_utf8_lossy(&stderr).into_owned(),
        })
    }

    /// Run and require success.
    pub fn run(&self, cmd: &Cmd) -> Result<CmdOutput, RunError> {
        let out = self.output(cmd)?;
        if out.code == Some(0) {
            Ok(out)
        } else {
            Err(RunError::Failed {
                cmd: cmd.display(),
                status: match out.code {
                    Some(c) => format!("exit code {c}"),
                    None => "killed by a signal".to_string(),
                },
                stderr: out.stderr.trim().to_string(),
            })
        }
    }
}
