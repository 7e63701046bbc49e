//! Messages between the shim, the zygote and container children: JSON over SOCK_SEQPACKET
//! socketpairs, one message per packet, with file descriptors passed as SCM_RIGHTS.

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::sys::socket::{recvmsg, sendmsg, socketpair, AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType};
use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::error::{SetupError, Step};

const MAX_MSG: usize = 1 << 20;

/// What a container child tells the shim.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum ChildMsg {
    /// `process.terminal`: the pty master, passed with this message (SCM_RIGHTS). Sent
    /// before Ready.
    Console,
    /// Setup is done and the process is prepared; waiting for Start. With when (CLOCK_MONOTONIC,
    /// ns) each stage of the setup ended, for the shim's log.
    Ready(crate::SetupClock),
    /// The payload's work between Ready and Start (a module's instantiation) is done; sent
    /// after Ready by a process that runs a payload, not by one that execs.
    Primed,
    /// Setup failed; the child exits (after Start, if that work failed).
    Failed(SetupError),
    /// The payload ended with a message for the shim's log (a trap, say).
    Exited { code: i32, message: Option<String> },
}

/// What the shim tells a container child.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub(crate) enum ParentMsg {
    Start,
    /// The container's user namespace has its uid_map and gid_map (see `userns`).
    IdsMapped,
    /// The cgroup's directories the child joins exist now (`Plan::cgroup_pending`). With,
    /// from the thread that made them, the files it joins them by (`Plan::cgroup_procs`),
    /// open for writing and in that order, or none (the child opens them then).
    CgroupReady,
}

pub(crate) fn pair() -> std::io::Result<(OwnedFd, OwnedFd)> {
    socketpair(AddressFamily::Unix, SockType::SeqPacket, None, SockFlag::SOCK_CLOEXEC).map_err(std::io::Error::from)
}

pub(crate) fn send<T: Serialize>(fd: BorrowedFd<'_>, msg: &T, fds: &[RawFd]) -> std::io::Result<()> {
    let bytes = serde_json::to_vec(msg).map_err(std::io::Error::other)?;
    let iov = [IoSlice::new(&bytes)];
    let cmsg = [ControlMessage::ScmRights(fds)];
    let cmsgs: &[ControlMessage] = if fds.is_empty() { &[] } else { &cmsg };
    loop {
        match sendmsg::<()>(fd.as_raw_fd(), &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None) {
            Ok(_) => return Ok(()),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// In a container child: waits for the shim's `want`, which `what` names in the errors
/// ("expected {what}", "the shim went away before {gone}"), failing `step` otherwise.
/// Returns the descriptors that came with it.
pub(crate) fn wait_for(fd: BorrowedFd<'_>, want: ParentMsg, step: Step, what: &str, gone: &str) -> Result<Vec<OwnedFd>, SetupError> {
    match recv::<ParentMsg>(fd, MsgFlags::empty()) {
        Ok(Some((got, fds))) if got == want => Ok(fds),
        Ok(Some((other, _))) => Err(SetupError::new(step, format!("expected {what}, got {other:?}"))),
        Ok(None) => Err(SetupError::new(step, format!("the shim went away before {gone}"))),
        Err(e) => Err(SetupError::new(step, format!("wait for {what}: {e}"))),
    }
}

/// Receives one message; `Ok(None)` when the peer closed its end.
pub(crate) fn recv<T: DeserializeOwned>(fd: BorrowedFd<'_>, flags: MsgFlags) -> std::io::Result<Option<(T, Vec<OwnedFd>)>> {
    // A buffer the message's size: its length is peeked first (MSG_TRUNC returns the whole
    // length). A buffer of the largest size would be zeroed on every call (after the first,
    // malloc serves it from the heap): a 1 MiB memset, and in a just-cloned container process
    // 256 copy-on-write faults, which cost about 0.7 ms before each message it waited for.
    let len = loop {
        match nix::sys::socket::recv(fd.as_raw_fd(), &mut [], flags | MsgFlags::MSG_PEEK | MsgFlags::MSG_TRUNC) {
            Ok(n) => break n,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    };
    // (Unreachable in practice: a packet is at most the socket's send buffer, some 200 KiB.
    // The message stays queued; every caller gives up on the socket after an error.)
    if len > MAX_MSG {
        return Err(std::io::Error::other(format!("a message of {len} bytes (at most {MAX_MSG})")));
    }
    let mut buf = vec![0u8; len.max(1)];
    // Room for the most a message carries: a cgroup's join files, one per hierarchy.
    let mut cmsg_space = nix::cmsg_space!([RawFd; 32]);
    let (n, fds) = loop {
        let mut iov = [IoSliceMut::new(&mut buf)];
        match recvmsg::<()>(fd.as_raw_fd(), &mut iov, Some(&mut cmsg_space), flags | MsgFlags::MSG_CMSG_CLOEXEC) {
            Ok(msg) => {
                if msg.flags.contains(MsgFlags::MSG_CTRUNC) {
                    // The kernel closed what did not fit: the message is not whole.
                    return Err(std::io::Error::other("a message came with more descriptors than expected"));
                }
                let mut fds = Vec::new();
                for c in msg.cmsgs().map_err(std::io::Error::from)? {
                    if let ControlMessageOwned::ScmRights(raw) = c {
                        // SAFETY: SCM_RIGHTS hands us new descriptors that nothing else owns.
                        fds.extend(raw.into_iter().map(|r| unsafe { OwnedFd::from_raw_fd(r) }));
                    }
                }
                break (msg.bytes, fds);
            }
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    };
    if n == 0 {
        return Ok(None);
    }
    let msg = serde_json::from_slice(&buf[..n]).map_err(std::io::Error::other)?;
    Ok(Some((msg, fds)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Msg(String);

    #[test]
    fn messages_of_any_size_up_to_the_limit_arrive_whole_with_their_fds() {
        let (a, b) = pair().unwrap();
        // (A packet is at most the socket's send buffer, about 200 KiB here.)
        let big = Msg("x".repeat(150_000));
        let (r, _w) = nix::unistd::pipe().unwrap();
        send(a.as_fd(), &Msg("small".into()), &[]).unwrap();
        send(a.as_fd(), &big, &[r.as_raw_fd()]).unwrap();
        let (m, fds) = recv::<Msg>(b.as_fd(), MsgFlags::empty()).unwrap().unwrap();
        assert_eq!((m, fds.len()), (Msg("small".into()), 0));
        let (m, fds) = recv::<Msg>(b.as_fd(), MsgFlags::empty()).unwrap().unwrap();
        assert_eq!((m.0.len(), fds.len()), (150_000, 1));
        // Over the limit: refused, not truncated.
        let huge = Msg("y".repeat(MAX_MSG + 10));
        if send(a.as_fd(), &huge, &[]).is_ok() {
            assert!(recv::<Msg>(b.as_fd(), MsgFlags::empty()).is_err());
        }
        drop(a);
        assert!(recv::<Msg>(b.as_fd(), MsgFlags::empty()).unwrap().is_none(), "the peer closed");
    }
}
