//! The child process of a crash test: this test binary run again on its one ignored
//! test, told what to do by environment variables, printing `READY` once it works, and
//! killed with SIGKILL; and the log it leaves behind. Shared by `tests/crash.rs`,
//! `tests/intake_crash.rs` and fsm-nats' `tests/relay_crash.rs` (by `#[path]`).

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write as _};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

/// How long a child may take to print `READY`.
const READY_WITHIN: Duration = Duration::from_secs(20);

/// One child process, killed if the test ends before it is.
pub(crate) struct ChildProcess {
    child: Child,
    lines: mpsc::Receiver<String>,
    stderr: PathBuf,
}

impl ChildProcess {
    /// Runs this binary's ignored test `test` alone, with the environment `configure`
    /// adds, its stdout read line by line and its stderr kept in `stderr` for a failure.
    pub(crate) fn spawn(
        test: &str,
        stderr: PathBuf,
        configure: impl FnOnce(&mut Command) -> &mut Command,
    ) -> Self {
        let exe = std::env::current_exe().expect("path of this test binary");
        let mut command = Command::new(exe);
        command.args([
            "--ignored",
            "--exact",
            test,
            "--nocapture",
            "--test-threads",
            "1",
        ]);
        let mut child = configure(&mut command)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(File::create(&stderr).expect("create the child's stderr file"))
            .spawn()
            .expect("spawn a child process");
        let stdout = child.stdout.take().expect("piped stdout");
        let (sender, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if sender.send(line).is_err() {
                    return;
                }
            }
        });
        ChildProcess {
            child,
            lines,
            stderr,
        }
    }

    /// Waits for the child's `READY` line; fails if it does not come in time.
    pub(crate) fn wait_ready(&mut self) {
        let deadline = Instant::now() + READY_WITHIN;
        loop {
            let wait = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(wait) {
                Ok(line) if line.split_whitespace().any(|word| word == "READY") => return,
                Ok(_) => {}
                Err(mpsc::RecvTimeoutError::Timeout) => self.fail("the child was not READY"),
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    self.fail("the child ended before READY")
                }
            }
        }
    }

    /// SIGKILL; fails if the child had already exited on its own.
    pub(crate) fn kill(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            self.fail(&format!("the child exited by itself with {status}"));
        }
        self.child.kill().expect("SIGKILL the child");
        let status = self.child.wait().expect("reap the child");
        assert_eq!(status.signal(), Some(9), "the child died of SIGKILL");
    }

    /// Fails the test with `why` and the child's stderr.
    pub(crate) fn fail(&mut self, why: &str) -> ! {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let stderr = std::fs::read_to_string(&self.stderr).unwrap_or_default();
        panic!("{why}\n--- child stderr:\n{stderr}");
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// An append-only file shared by a child's tasks. Unbuffered, one `write` per line
/// (`O_APPEND`), so a line the child wrote is in the file after a SIGKILL.
#[derive(Clone)]
pub(crate) struct Log(Arc<File>);

impl Log {
    pub(crate) fn create(path: &Path) -> Self {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
        Log(Arc::new(file))
    }

    /// Appends `line` (a newline in it becomes a space: one event, one line).
    pub(crate) fn line(&self, line: String) {
        let mut line = line.replace('\n', " ");
        line.push('\n');
        (&*self.0)
            .write_all(line.as_bytes())
            .expect("append to a log");
    }
}
