//! A process's stdio. The shim opens containerd's FIFOs and hands the process its fds 0-2:
//! stdout and stderr are the FIFOs themselves (no copy); stdin goes through a pipe that a
//! relay thread feeds, so that CloseIO can close it while containerd still holds the FIFO
//! (CRI does, for `stdinOnce`). With a terminal, the process's stdio is a pty made in the
//! container, and relay threads copy between its master and the FIFOs.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::thread::JoinHandle;

use log::warn;
use nix::errno::Errno;
use nix::fcntl::{fcntl, open, FcntlArg, OFlag};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::stat::Mode;

#[derive(Debug, thiserror::Error)]
#[error("{what} {path}: {source}")]
pub struct IoError {
    pub what: &'static str,
    pub path: String,
    pub source: std::io::Error,
}

fn err<'a>(what: &'static str, path: &'a str) -> impl FnOnce(Errno) -> IoError + 'a {
    move |e| IoError { what, path: path.to_string(), source: e.into() }
}

/// The FIFOs of one process, opened; what the process gets and what the shim keeps.
pub struct OpenedIo {
    /// The process's fds 0, 1 and 2.
    pub child: [OwnedFd; 3],
    /// Kept by the shim: the stdin relay (not yet started with a terminal).
    stdin: Option<StdinSource>,
    /// With a terminal: the stdout FIFO the pty's output goes to.
    terminal_out: Option<OwnedFd>,
}

enum StdinSource {
    /// Relaying already, into the pipe that is the process's stdin.
    Relaying(StdinRelay),
    /// The FIFO, for a terminal's relay once the pty master exists.
    Fifo(OwnedFd),
}

/// The relays of a running process's stdio.
#[derive(Default)]
pub struct Relays {
    stdin: Option<StdinRelay>,
    /// With a terminal: a copy of the pty master, for ResizePty.
    console: Option<OwnedFd>,
    output: Option<JoinHandle<()>>,
}

fn null() -> Result<OwnedFd, IoError> {
    open("/dev/null", OFlag::O_RDWR | OFlag::O_CLOEXEC, Mode::empty()).map_err(err("open", "/dev/null"))
}

/// Opens a FIFO (or file) for writing without blocking on a missing reader: a read end held
/// meanwhile makes the open succeed at once.
fn open_writer(path: &str) -> Result<OwnedFd, IoError> {
    let keep = open(path, OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC, Mode::empty()).ok();
    let fd = open(path, OFlag::O_WRONLY | OFlag::O_CLOEXEC, Mode::empty()).map_err(err("open", path))?;
    drop(keep);
    Ok(fd)
}

/// Opens the FIFOs containerd named (empty: none, /dev/null). With `terminal` the process
/// gets /dev/null here; its pty comes from the container and [`OpenedIo::start`] relays it.
pub fn open_io(stdin: &str, stdout: &str, stderr: &str, terminal: bool) -> Result<OpenedIo, IoError> {
    // Opening a FIFO's read end without O_NONBLOCK waits for a writer; the relay polls.
    let stdin_fifo = if stdin.is_empty() {
        None
    } else {
        Some(open(stdin, OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC, Mode::empty()).map_err(err("open stdin", stdin))?)
    };
    let out = if stdout.is_empty() { null()? } else { open_writer(stdout)? };
    if terminal {
        // A pty has one output: stderr goes there too, as with runc.
        return Ok(OpenedIo { child: [null()?, null()?, null()?], stdin: stdin_fifo.map(StdinSource::Fifo), terminal_out: Some(out) });
    }
    let errfd = if stderr.is_empty() { null()? } else { open_writer(stderr)? };
    let (child_in, stdin) = match stdin_fifo {
        None => (null()?, None),
        Some(fifo) => {
            let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(err("pipe for stdin", stdin))?;
            (r, Some(StdinSource::Relaying(StdinRelay::spawn(fifo, w)?)))
        }
    };
    Ok(OpenedIo { child: [child_in, out, errfd], stdin, terminal_out: None })
}

impl OpenedIo {
    /// Splits off what the process gets (fds 0-2) from what the shim keeps.
    pub fn split(self) -> ([OwnedFd; 3], PendingIo) {
        (self.child, PendingIo { stdin: self.stdin, terminal_out: self.terminal_out })
    }
}

/// The shim's side of a process's stdio until the process exists.
pub struct PendingIo {
    stdin: Option<StdinSource>,
    terminal_out: Option<OwnedFd>,
}

impl PendingIo {
    /// Starts the terminal's relays once the process sent its pty master (`console`).
    pub fn start(self, console: Option<&OwnedFd>) -> Result<Relays, IoError> {
        let mut relays = Relays::default();
        match (console, self.terminal_out) {
            (Some(master), Some(out)) => {
                let dup = |m: &OwnedFd| m.try_clone().map_err(|source| IoError { what: "dup", path: "pty master".into(), source });
                let reader = dup(master)?;
                relays.output = Some(std::thread::Builder::new().name("pty-out".into()).spawn(move || copy_output(reader, out)).map_err(|source| IoError {
                    what: "spawn relay",
                    path: "pty".into(),
                    source,
                })?);
                if let Some(StdinSource::Fifo(fifo)) = self.stdin {
                    relays.stdin = Some(StdinRelay::spawn(fifo, dup(master)?)?);
                }
                relays.console = Some(dup(master)?);
            }
            _ => {
                if let Some(StdinSource::Relaying(r)) = self.stdin {
                    relays.stdin = Some(r);
                }
            }
        }
        Ok(relays)
    }
}

impl Relays {
    /// CloseIO: takes the stdin relay; dropping it makes the process read end-of-file on
    /// stdin (with a terminal: input stops).
    pub fn take_stdin(&mut self) -> Option<StdinRelay> {
        self.stdin.take()
    }

    /// ResizePty; nothing to do for a process without a terminal.
    pub fn resize(&self, width: u32, height: u32) -> std::io::Result<()> {
        let Some(master) = &self.console else { return Ok(()) };
        let ws = libc::winsize { ws_row: height as u16, ws_col: width as u16, ws_xpixel: 0, ws_ypixel: 0 };
        nix::ioctl_write_ptr_bad!(set_winsize, libc::TIOCSWINSZ, libc::winsize);
        // SAFETY: TIOCSWINSZ reads one winsize struct, which `ws` is, from the pty master.
        unsafe { set_winsize(master.as_raw_fd(), &ws) }?;
        Ok(())
    }

    /// The terminal's output relay, to wait for once the process exited.
    pub fn take_output(&mut self) -> Option<OutputRelay> {
        self.output.take().map(OutputRelay)
    }
}

/// The thread copying a terminal's output to containerd.
pub struct OutputRelay(JoinHandle<()>);

impl OutputRelay {
    /// Waits (at most `timeout`) until the terminal's last output reached containerd.
    pub fn wait(self, timeout: std::time::Duration) {
        let deadline = std::time::Instant::now() + timeout;
        while !self.0.is_finished() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        if self.0.is_finished() {
            let _ = self.0.join();
        }
    }
}

/// Copies the pty's output to the stdout FIFO until the last slave descriptor closes (EIO).
fn copy_output(master: OwnedFd, out: OwnedFd) {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match nix::unistd::read(master.as_fd(), &mut buf) {
            Ok(0) | Err(Errno::EIO) => return,
            Ok(n) => {
                if write_all(out.as_fd(), &buf[..n], None).is_err() {
                    return;
                }
            }
            Err(Errno::EINTR) => {}
            // The stdin relay made the master (one open file) non-blocking.
            Err(Errno::EAGAIN) => {
                let _ = poll(&mut [PollFd::new(master.as_fd(), PollFlags::POLLIN)], PollTimeout::NONE);
            }
            Err(e) => {
                warn!(error:% = e; "pty output relay");
                return;
            }
        }
    }
}

/// Feeds a process's stdin from containerd's stdin FIFO. Dropping it (CloseIO, or the end of
/// the task) stops the thread, which closes its end: the process reads end-of-file.
pub struct StdinRelay {
    /// Closing this wakes the thread (its end sees POLLHUP).
    stop: Option<OwnedFd>,
    thread: Option<JoinHandle<()>>,
}

impl StdinRelay {
    fn spawn(fifo: OwnedFd, dst: OwnedFd) -> Result<StdinRelay, IoError> {
        let (stop_r, stop_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(err("pipe", "stdin relay"))?;
        let flags = fcntl(&dst, FcntlArg::F_GETFL).map_err(err("fcntl", "stdin relay"))?;
        fcntl(&dst, FcntlArg::F_SETFL(OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK)).map_err(err("fcntl", "stdin relay"))?;
        let thread = std::thread::Builder::new()
            .name("stdin".into())
            .spawn(move || relay_stdin(fifo, dst, stop_r))
            .map_err(|source| IoError { what: "spawn relay", path: "stdin".into(), source })?;
        Ok(StdinRelay { stop: Some(stop_w), thread: Some(thread) })
    }
}

impl Drop for StdinRelay {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn readable(f: PollFlags) -> bool {
    f.intersects(PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR)
}

fn relay_stdin(fifo: OwnedFd, dst: OwnedFd, stop: OwnedFd) {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        let mut fds = [PollFd::new(fifo.as_fd(), PollFlags::POLLIN), PollFd::new(stop.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(_) => return,
        }
        if fds[1].revents().is_some_and(readable) {
            return;
        }
        // A FIFO reports POLLHUP only once a writer came and went; before any writer it
        // reports nothing, so end-of-file is never seen before containerd opened it.
        if !fds[0].revents().is_some_and(readable) {
            continue;
        }
        match nix::unistd::read(fifo.as_fd(), &mut buf) {
            Ok(0) => return,
            Ok(n) => {
                if write_all(dst.as_fd(), &buf[..n], Some(stop.as_fd())).is_err() {
                    return;
                }
            }
            Err(Errno::EAGAIN | Errno::EINTR) => {}
            Err(_) => return,
        }
    }
}

/// Writes all of `data`; with a `stop` descriptor, gives up when it hangs up.
fn write_all(fd: BorrowedFd<'_>, mut data: &[u8], stop: Option<BorrowedFd<'_>>) -> Result<(), Errno> {
    while !data.is_empty() {
        match nix::unistd::write(fd, data) {
            Ok(n) => data = &data[n..],
            Err(Errno::EINTR) => {}
            Err(Errno::EAGAIN) => {
                let mut fds = vec![PollFd::new(fd, PollFlags::POLLOUT)];
                if let Some(s) = stop {
                    fds.push(PollFd::new(s, PollFlags::POLLIN));
                }
                let _ = poll(&mut fds, PollTimeout::NONE);
                if fds.get(1).and_then(|f| f.revents()).is_some_and(readable) {
                    return Err(Errno::ECANCELED);
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;
    use std::io::{Read, Write};
    use std::path::Path;

    fn fifo(dir: &Path, name: &str) -> String {
        let p = dir.join(name);
        nix::unistd::mkfifo(&p, Mode::from_bits_truncate(0o600)).unwrap();
        p.display().to_string()
    }

    #[test]
    fn stdin_is_relayed_and_close_io_gives_eof_while_the_fifo_stays_open() {
        let d = tempfile::tempdir().unwrap();
        let path = fifo(d.path(), "in");
        let io = open_io(&path, "", "", false).unwrap();
        let ([child_in, _, _], pending) = io.split();
        let mut relays = pending.start(None).unwrap();
        // containerd's side: a writer that stays open.
        let mut writer = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        writer.write_all(b"hello\n").unwrap();
        let mut child = File::from(child_in);
        let mut got = [0u8; 6];
        child.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"hello\n");
        drop(relays.take_stdin());
        let mut rest = Vec::new();
        child.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty(), "after CloseIO the process reads end-of-file: {rest:?}");
        drop(writer);
    }

    #[test]
    fn stdin_ends_when_the_last_writer_leaves() {
        let d = tempfile::tempdir().unwrap();
        let path = fifo(d.path(), "in");
        let ([child_in, _, _], pending) = open_io(&path, "", "", false).unwrap().split();
        let _relays = pending.start(None).unwrap();
        let mut writer = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        writer.write_all(b"abc").unwrap();
        drop(writer);
        let mut all = String::new();
        File::from(child_in).read_to_string(&mut all).unwrap();
        assert_eq!(all, "abc");
    }

    #[test]
    fn stdout_goes_straight_to_the_fifo() {
        let d = tempfile::tempdir().unwrap();
        let out = fifo(d.path(), "out");
        let reader = open(out.as_str(), OFlag::O_RDONLY | OFlag::O_NONBLOCK, Mode::empty()).unwrap();
        let ([_, child_out, child_err], _pending) = open_io("", &out, "", false).unwrap().split();
        File::from(child_out).write_all(b"x").unwrap();
        let mut buf = [0u8; 1];
        assert_eq!(nix::unistd::read(reader.as_fd(), &mut buf).unwrap(), 1);
        // No stderr FIFO: /dev/null.
        File::from(child_err).write_all(b"dropped").unwrap();
    }

    #[test]
    fn a_missing_fifo_is_named() {
        let e = open_io("/nonexistent/stdin", "", "", false).err().unwrap().to_string();
        assert!(e.contains("/nonexistent/stdin"), "{e}");
    }
}
