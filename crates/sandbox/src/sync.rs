//! Messages between the shim, the zygote and container children: JSON over SOCK_SEQPACKET
//! socketpairs, one message per packet, with file descriptors passed as SCM_RIGHTS.

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::sys::socket::{recvmsg, sendmsg, socketpair, AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType};
use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::error::SetupError;

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
    /// Setup failed; the child exits.
    Failed(SetupError),
    /// A non-exec payload began running (a native exec reports by closing the socket).
    Started,
    /// The payload ended with a message for the shim's log (a trap, say).
    Exited { code: i32, message: Option<String> },
}

/// What the shim tells a container child.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum ParentMsg {
    Start,
    /// The container's user namespace has its uid_map and gid_map (see `userns`).
    IdsMapped,
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

/// Receives one message; `Ok(None)` when the peer closed its end.
pub(crate) fn recv<T: DeserializeOwned>(fd: BorrowedFd<'_>, flags: MsgFlags) -> std::io::Result<Option<(T, Vec<OwnedFd>)>> {
    let mut buf = vec![0u8; MAX_MSG];
    // Room for the most a message carries: a spawn request's sync, stdio and cgroup.
    let mut cmsg_space = nix::cmsg_space!([RawFd; 8]);
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
