//! The `shardpool` binary as a child process: run it to completion ([`shardpool`],
//! [`fails_with`]), or keep it running ([`Proc`], killed on drop) and read the addresses it prints.
#![allow(dead_code)] // each test binary compiles this module alone and uses only part of it

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The binary under test, built by cargo for the integration tests.
pub const BIN: &str = env!("CARGO_BIN_EXE_shardpool");

/// How long [`Proc::line_with`] waits for a line.
const LINE_LIMIT: Duration = Duration::from_secs(20);

/// Runs the binary with `args` to completion; panics if it panicked.
#[track_caller]
pub fn shardpool(args: &[&str]) -> Output {
    let output = Command::new(BIN)
        .args(args)
        .output()
        .expect("run the shardpool binary");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !stderr.contains("panicked"),
        "shardpool panicked:\n{stderr}"
    );
    output
}

/// Runs the binary with `args`, which must fail with a stderr containing every one of `expected`.
#[track_caller]
pub fn fails_with(args: &[&str], expected: &[&str]) {
    let output = shardpool(args);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{args:?} should fail");
    for e in expected {
        assert!(stderr.contains(e), "{args:?}: {stderr}");
    }
}

/// A path `name` in a new directory of its own (per test process and name, so tests running at
/// once do not collide), for the binary's input or output files; the test removes the directory.
pub fn scratch_path(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("shardpool-test-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

/// A running `shardpool` child, killed on drop; its stdout lines are read as they come.
pub struct Proc {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Proc {
    /// Starts the binary with `args`, the environment `env` plus `SHARDPOOL_LOG=warn`, and its
    /// stderr sent to `stderr`.
    pub fn start(args: &[&str], env: &[(&str, &str)], stderr: Stdio) -> Proc {
        Proc::spawn(Command::new(BIN), args, env, stderr)
    }

    /// Like [`Proc::start`], with the child's descriptor limit (soft and hard) set to `nofile`,
    /// as `ulimit -n` would before `exec`.
    pub fn start_with_nofile(
        nofile: u64,
        args: &[&str],
        env: &[(&str, &str)],
        stderr: Stdio,
    ) -> Proc {
        use std::os::unix::process::CommandExt;
        let mut cmd = Command::new(BIN);
        // SAFETY: the closure runs in the forked child before exec and only calls setrlimit,
        // which is async-signal-safe; it touches no memory of the parent.
        unsafe {
            cmd.pre_exec(move || {
                let lim = libc::rlimit {
                    rlim_cur: nofile,
                    rlim_max: nofile,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        Proc::spawn(cmd, args, env, stderr)
    }

    fn spawn(mut cmd: Command, args: &[&str], env: &[(&str, &str)], stderr: Stdio) -> Proc {
        let mut child = cmd
            .args(args)
            .envs(env.iter().copied())
            .env("SHARDPOOL_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("cannot start the shardpool binary");
        let out = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Proc { child, lines }
    }

    /// The rest of the first stdout line containing `marker`, after it; panics if none comes
    /// within 20 s (or the process closes its stdout first).
    #[track_caller]
    pub fn line_with(&self, marker: &str) -> String {
        let deadline = Instant::now() + LINE_LIMIT;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            let Ok(line) = self.lines.recv_timeout(left) else {
                break;
            };
            if let Some(rest) = line.split(marker).nth(1) {
                return rest.to_string();
            }
        }
        panic!("no `{marker}` line on stdout within {LINE_LIMIT:?}");
    }

    /// The address printed right after `marker` on a stdout line (waits as [`Proc::line_with`]).
    #[track_caller]
    pub fn addr_after(&self, marker: &str) -> SocketAddr {
        let rest = self.line_with(marker);
        rest.split_whitespace().next().unwrap().parse().unwrap()
    }

    /// Sends the signal `sig` to the process.
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid; no memory is involved.
        assert_eq!(unsafe { libc::kill(self.child.id() as i32, sig) }, 0);
    }

    /// Waits up to `limit` for the process to exit; its exit status.
    #[track_caller]
    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                start.elapsed() < limit,
                "shardpool did not exit within {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
