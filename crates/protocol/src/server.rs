//! The daemon's ttrpc server: the wire format and the generated method handlers are ttrpc's,
//! the threads are ours.
//!
//! ttrpc 0.9's sync server hands every request from a reader thread to a pool thread, and
//! every response from there to a writer thread: two thread wake-ups per call on the
//! shim's side, each a cross-CPU wake-up on a small VM, and five threads started for each
//! new connection. Here the threads of a connection take turns reading (one reads, the
//! others wait for the turn); the thread that read a request handles it and writes its
//! response itself, so a call costs no hand-over. A request that blocks (Wait until its task
//! exits, Create compiling a module) only holds its own thread: before handling, a thread
//! makes sure another one is there to read the next request.

use std::collections::HashMap;
use std::io::{BufReader, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use log::{debug, warn};
use protobuf::{CodedInputStream, Message};
use ttrpc::proto::{MESSAGE_HEADER_LENGTH, MESSAGE_LENGTH_MAX, MESSAGE_TYPE_REQUEST, MESSAGE_TYPE_RESPONSE};
use ttrpc::{Code, MessageHeader, MethodHandler, Request, Response, TtrpcContext};

/// The services' methods by path (`/service/method`), as ttrpc's generated `create_*` give them.
pub type Methods = HashMap<String, Box<dyn MethodHandler + Send + Sync>>;

/// Idle threads a connection keeps beyond the one whose turn it is to read: more would only
/// be memory, fewer would start a thread for every request that arrives while one is handled.
const SPARE_THREADS: usize = 1;

/// A running server. Dropping it leaves its threads serving; [`Server::stop`] ends it.
pub struct Server {
    listener: UnixListener,
    calls: Arc<Calls>,
}

/// Requests read and not yet answered, on every connection.
#[derive(Default)]
struct Calls {
    open: Mutex<usize>,
    none_open: Condvar,
}

impl Calls {
    fn begin(&self) {
        *self.open.lock().unwrap_or_else(|e| e.into_inner()) += 1;
    }

    fn end(&self) {
        let mut n = self.open.lock().unwrap_or_else(|e| e.into_inner());
        *n -= 1;
        if *n == 0 {
            self.none_open.notify_all();
        }
    }
}

/// Serves `methods` on every connection to `listener`, from threads of their own.
pub fn serve(listener: UnixListener, methods: Methods) -> std::io::Result<Server> {
    let calls = Arc::new(Calls::default());
    let accepting = listener.try_clone()?;
    let methods = Arc::new(methods);
    let c = calls.clone();
    std::thread::Builder::new().name("ttrpc-accept".into()).spawn(move || accept_loop(accepting, methods, c))?;
    Ok(Server { listener, calls })
}

impl Server {
    /// Accepts no more connections, then waits (at most `within`) until every request read
    /// so far has been answered: the Shutdown request that led here gets its reply out.
    /// False if some did not end in time.
    pub fn stop(self, within: Duration) -> bool {
        // SAFETY: shutdown(2) on our own listening socket; a blocked accept returns EINVAL.
        unsafe { libc::shutdown(self.listener.as_raw_fd(), libc::SHUT_RDWR) };
        let deadline = Instant::now() + within;
        let mut open = self.calls.open.lock().unwrap_or_else(|e| e.into_inner());
        while *open > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            open = self.calls.none_open.wait_timeout(open, left).unwrap_or_else(|e| e.into_inner()).0;
        }
        true
    }
}

fn accept_loop(listener: UnixListener, methods: Arc<Methods>, calls: Arc<Calls>) {
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                let conn = match Connection::new(stream) {
                    Ok(c) => Arc::new(c),
                    Err(e) => {
                        warn!(error:% = e; "ttrpc: connection refused");
                        continue;
                    }
                };
                // Two threads: one reads the first request while the other waits for the
                // next, so the first request does not wait for a thread to start.
                for _ in 0..2 {
                    conn.spawn_worker(&methods, &calls);
                }
            }
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => return,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                // Out of fds or memory: let some go, then try again.
                warn!(error:% = e; "ttrpc: accept");
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

struct Connection {
    /// Held by the thread whose turn it is to read.
    reader: Mutex<BufReader<UnixStream>>,
    /// Held while one response is written, in one write.
    writer: Mutex<UnixStream>,
    fd: RawFd,
    /// Threads reading or waiting for their turn to read.
    readers: AtomicUsize,
    /// Dropped when the peer hangs up: handlers see `cancel_rx` disconnected.
    cancel: Mutex<Option<crossbeam_channel::Sender<()>>>,
    cancel_rx: crossbeam_channel::Receiver<()>,
}

impl Connection {
    fn new(stream: UnixStream) -> std::io::Result<Connection> {
        let fd = stream.as_raw_fd();
        let writer = stream.try_clone()?;
        let (cancel, cancel_rx) = crossbeam_channel::unbounded();
        Ok(Connection {
            reader: Mutex::new(BufReader::with_capacity(16 << 10, stream)),
            writer: Mutex::new(writer),
            fd,
            readers: AtomicUsize::new(0),
            cancel: Mutex::new(Some(cancel)),
            cancel_rx,
        })
    }

    fn spawn_worker(self: &Arc<Self>, methods: &Arc<Methods>, calls: &Arc<Calls>) {
        let (conn, methods, calls) = (self.clone(), methods.clone(), calls.clone());
        // Counted as a reader from now, so that no other thread starts one for the same need.
        self.readers.fetch_add(1, Ordering::SeqCst);
        let spawned = std::thread::Builder::new().name(format!("ttrpc-c{}", self.fd)).spawn(move || conn.work(&methods, &calls));
        if let Err(e) = spawned {
            self.readers.fetch_sub(1, Ordering::SeqCst);
            warn!(error:% = e; "ttrpc: no thread for a connection");
        }
    }

    /// One thread's life: wait for the turn to read, read a request, answer it; again.
    fn work(self: Arc<Self>, methods: &Arc<Methods>, calls: &Arc<Calls>) {
        let mut first = true;
        loop {
            if !first {
                self.readers.fetch_add(1, Ordering::SeqCst);
            }
            first = false;
            let read = {
                let mut r = self.reader.lock().unwrap_or_else(|e| e.into_inner());
                let read = read_message(&mut *r);
                if read.is_ok() {
                    // Counted before the turn passes on: Server::stop must not see zero
                    // between this read and its answer.
                    calls.begin();
                }
                read
            };
            let left = self.readers.fetch_sub(1, Ordering::SeqCst) - 1;
            let (mh, body) = match read {
                Ok(m) => m,
                Err(e) => {
                    if e.kind() != std::io::ErrorKind::UnexpectedEof {
                        debug!(error:% = e; "ttrpc: read");
                    }
                    // The peer is gone (or broke the framing): every thread of the
                    // connection ends, each on its turn, and handlers see the cancel.
                    self.cancel.lock().unwrap_or_else(|e| e.into_inner()).take();
                    let _ = self.writer.lock().unwrap_or_else(|e| e.into_inner()).shutdown(std::net::Shutdown::Both);
                    return;
                }
            };
            // Someone must read the next request while this one is handled.
            if left == 0 {
                self.spawn_worker(methods, calls);
            }
            if let Some(response) = self.answer(methods, mh, body) {
                let mut w = self.writer.lock().unwrap_or_else(|e| e.into_inner());
                if let Err(e) = w.write_all(&response) {
                    debug!(error:% = e; "ttrpc: write");
                }
            }
            calls.end();
            // Enough threads wait for their turn already.
            if self.readers.load(Ordering::SeqCst) > SPARE_THREADS {
                return;
            }
        }
    }

    /// The framed response to one message (none for a message that is not a request).
    fn answer(&self, methods: &Methods, mh: MessageHeader, body: Result<Vec<u8>, Status>) -> Option<Vec<u8>> {
        if mh.type_ != MESSAGE_TYPE_REQUEST {
            return None;
        }
        let stream_id = mh.stream_id;
        let req = body.and_then(|b| {
            let mut req = Request::new();
            req.merge_from(&mut CodedInputStream::from_bytes(&b)).map_err(|e| (Code::INVALID_ARGUMENT, format!("bad request: {e}")))?;
            Ok(req)
        });
        let response = match req {
            Err(status) => error_response(status),
            Ok(req) => {
                let path = format!("/{}/{}", req.service, req.method);
                match methods.get(&path) {
                    None => error_response((Code::UNIMPLEMENTED, format!("{path} is not a method of this shim"))),
                    Some(method) => {
                        let (res_tx, res_rx) = std::sync::mpsc::channel();
                        let ctx = TtrpcContext {
                            fd: self.fd,
                            cancel_rx: self.cancel_rx.clone(),
                            mh,
                            res_tx,
                            metadata: ttrpc::context::from_pb(&req.metadata),
                            timeout_nano: req.timeout_nano,
                        };
                        // The generated handler decodes the request, calls the service and
                        // puts the encoded response in the channel; it fails only before that.
                        match method.handler(ctx, req) {
                            Ok(()) => match res_rx.try_recv() {
                                Ok((_, encoded)) => return Some(frame(MESSAGE_TYPE_RESPONSE, stream_id, &encoded)),
                                Err(_) => error_response((Code::INTERNAL, format!("{path}: no response"))),
                            },
                            Err(e) => error_response((Code::INVALID_ARGUMENT, format!("{path}: {e}"))),
                        }
                    }
                }
            }
        };
        Some(frame(MESSAGE_TYPE_RESPONSE, stream_id, &response.write_to_bytes().unwrap_or_default()))
    }
}

/// A ttrpc status: its code and message.
type Status = (Code, String);

fn error_response((code, message): Status) -> Response {
    let mut res = Response::new();
    res.set_status(ttrpc::get_status(code, message));
    res
}

/// Header and body of a message of type `type_`, as one buffer (one write: the peer wakes once).
fn frame(type_: u8, stream_id: u32, body: &[u8]) -> Vec<u8> {
    let mh = MessageHeader { length: body.len() as u32, stream_id, type_, flags: 0 };
    let mut out = Vec::with_capacity(MESSAGE_HEADER_LENGTH + body.len());
    out.extend_from_slice(&Vec::<u8>::from(mh));
    out.extend_from_slice(body);
    out
}

/// Reads one message. An oversized body is read and dropped, and reported in its place (the
/// stream stays in step); a short read or a hang-up is an error.
fn read_message(r: &mut impl Read) -> std::io::Result<(MessageHeader, Result<Vec<u8>, Status>)> {
    let mut header = [0u8; MESSAGE_HEADER_LENGTH];
    r.read_exact(&mut header)?;
    let mh = MessageHeader::from(&header);
    let len = mh.length as usize;
    if len > MESSAGE_LENGTH_MAX {
        std::io::copy(&mut r.take(len as u64), &mut std::io::sink())?;
        return Ok((mh, Err((Code::RESOURCE_EXHAUSTED, format!("message of {len} bytes, more than the {MESSAGE_LENGTH_MAX} ttrpc allows")))));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)?;
    Ok((mh, Ok(body)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use containerd_shim::protos::shim::shim::{ConnectRequest, ConnectResponse, KillRequest, StateRequest, StateResponse, WaitRequest, WaitResponse};
    use containerd_shim::protos::shim::shim_ttrpc::{create_task, Task, TaskClient};
    use containerd_shim::api::Empty;
    use std::path::Path;
    use std::sync::mpsc;

    /// Wait blocks until Kill; State and Connect answer at once (Connect with the number of
    /// threads of its connection).
    #[derive(Default)]
    struct Toy {
        killed: Mutex<bool>,
        kill: Condvar,
    }

    impl Task for Toy {
        fn wait(&self, _: &TtrpcContext, _: WaitRequest) -> ttrpc::Result<WaitResponse> {
            let mut k = self.killed.lock().unwrap();
            while !*k {
                k = self.kill.wait(k).unwrap();
            }
            Ok(WaitResponse { exit_status: 137, ..Default::default() })
        }
        fn kill(&self, _: &TtrpcContext, _: KillRequest) -> ttrpc::Result<Empty> {
            *self.killed.lock().unwrap() = true;
            self.kill.notify_all();
            Ok(Empty::new())
        }
        fn state(&self, _: &TtrpcContext, req: StateRequest) -> ttrpc::Result<StateResponse> {
            Ok(StateResponse { id: req.id, ..Default::default() })
        }
        fn connect(&self, ctx: &TtrpcContext, _: ConnectRequest) -> ttrpc::Result<ConnectResponse> {
            Ok(ConnectResponse { version: conn_threads(ctx.fd).to_string(), ..Default::default() })
        }
    }

    /// Threads of the connection on `fd` (named after it).
    fn conn_threads(fd: RawFd) -> usize {
        let name = format!("ttrpc-c{fd}");
        std::fs::read_dir("/proc/self/task").unwrap().flatten().filter(|t| std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim() == name)).count()
    }

    fn ctx() -> ttrpc::context::Context {
        ttrpc::context::with_timeout(5_000_000_000)
    }

    fn start(dir: &Path) -> (Server, String) {
        let path = dir.join("s.sock");
        let server = serve(UnixListener::bind(&path).unwrap(), create_task(Arc::new(Toy::default()))).unwrap();
        (server, format!("unix://{}", path.display()))
    }

    /// A Wait sent on `client` from a thread of its own, blocked in the service by the time
    /// this returns; its exit status comes on the channel once Kill releases it.
    fn blocked_wait(client: &TaskClient) -> mpsc::Receiver<ttrpc::Result<u32>> {
        let waiting = client.clone();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || tx.send(waiting.wait(ctx(), &WaitRequest::default()).map(|r| r.exit_status)));
        std::thread::sleep(Duration::from_millis(100));
        rx
    }

    #[test]
    fn a_blocked_call_holds_only_its_own_thread_and_threads_do_not_pile_up() {
        let dir = tempfile::tempdir().unwrap();
        let (server, addr) = start(dir.path());
        let client = TaskClient::new(ttrpc::Client::connect(&addr).unwrap());
        // The Wait is in and blocked: later calls on the same connection are still answered.
        let rx = blocked_wait(&client);
        for i in 0..50 {
            let id = format!("t{i}");
            assert_eq!(client.state(ctx(), &StateRequest { id: id.clone(), ..Default::default() }).unwrap().id, id);
        }
        assert!(rx.try_recv().is_err(), "Wait returned before Kill");
        // One thread in the Wait, one handling Connect, at most one spare waiting to read.
        let threads: usize = client.connect(ctx(), &ConnectRequest::default()).unwrap().version.parse().unwrap();
        assert!((2..=3).contains(&threads), "{threads} connection threads");
        client.kill(ctx(), &KillRequest::default()).unwrap();
        assert_eq!(rx.recv_timeout(Duration::from_secs(5)).unwrap().unwrap(), 137);
        assert!(server.stop(Duration::from_secs(2)));
    }

    #[test]
    fn unknown_methods_and_oversized_messages_get_an_error_and_the_connection_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let (server, addr) = start(dir.path());
        let mut s = UnixStream::connect(addr.strip_prefix("unix://").unwrap()).unwrap();
        let request = |stream_id: u32, service: &str, method: &str| {
            let req = Request { service: service.into(), method: method.into(), ..Default::default() };
            frame(MESSAGE_TYPE_REQUEST, stream_id, &req.write_to_bytes().unwrap())
        };
        let reply = |s: &mut UnixStream| {
            let (mh, body) = read_message(s).unwrap();
            let res = Response::parse_from_bytes(&body.unwrap()).unwrap();
            (mh.stream_id, mh.type_, res.status.code.value(), res.status.message.clone())
        };
        s.write_all(&request(1, "no.such.Service", "Call")).unwrap();
        let (id, ty, code, msg) = reply(&mut s);
        assert_eq!((id, ty, code), (1, MESSAGE_TYPE_RESPONSE, Code::UNIMPLEMENTED as i32));
        assert!(msg.contains("/no.such.Service/Call"), "{msg}");
        // A header announcing more than ttrpc allows, and that many bytes.
        let big = MESSAGE_LENGTH_MAX + 1;
        s.write_all(&Vec::<u8>::from(MessageHeader { length: big as u32, stream_id: 3, type_: MESSAGE_TYPE_REQUEST, flags: 0 })).unwrap();
        s.write_all(&vec![0u8; big]).unwrap();
        let (id, _, code, msg) = reply(&mut s);
        assert_eq!((id, code), (3, Code::RESOURCE_EXHAUSTED as i32));
        assert!(msg.contains(&big.to_string()), "{msg}");
        // A request that is not protobuf.
        s.write_all(&frame(MESSAGE_TYPE_REQUEST, 5, &[0xff; 3])).unwrap();
        let (id, _, code, _) = reply(&mut s);
        assert_eq!((id, code), (5, Code::INVALID_ARGUMENT as i32));
        // Still in step: a real call on the same connection.
        let state = StateRequest { id: "after".into(), ..Default::default() };
        let req = Request { service: "containerd.task.v2.Task".into(), method: "State".into(), payload: state.write_to_bytes().unwrap(), ..Default::default() };
        s.write_all(&frame(MESSAGE_TYPE_REQUEST, 7, &req.write_to_bytes().unwrap())).unwrap();
        let (mh, body) = read_message(&mut s).unwrap();
        let res = Response::parse_from_bytes(&body.unwrap()).unwrap();
        assert_eq!((mh.stream_id, res.status.code.value()), (7, Code::OK as i32));
        assert_eq!(StateResponse::parse_from_bytes(&res.payload).unwrap().id, "after");
        drop(s);
        assert!(server.stop(Duration::from_secs(2)));
    }

    #[test]
    fn stop_waits_for_open_calls_within_its_bound_and_refuses_new_connections() {
        let dir = tempfile::tempdir().unwrap();
        let (server, addr) = start(dir.path());
        let client = TaskClient::new(ttrpc::Client::connect(&addr).unwrap());
        let rx = blocked_wait(&client);
        let killer = client.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            killer.kill(ctx(), &KillRequest::default()).unwrap();
        });
        let t = Instant::now();
        assert!(server.stop(Duration::from_secs(5)));
        // It returned once the Wait was answered, not before.
        assert!(t.elapsed() >= Duration::from_millis(150), "{:?}", t.elapsed());
        assert_eq!(rx.recv_timeout(Duration::from_secs(5)).unwrap().unwrap(), 137);
        std::thread::sleep(Duration::from_millis(50));
        let refused = UnixStream::connect(addr.strip_prefix("unix://").unwrap()).and_then(|mut s| {
            s.set_read_timeout(Some(Duration::from_millis(300)))?;
            s.write_all(&[0u8; MESSAGE_HEADER_LENGTH])?;
            s.read(&mut [0u8; 1])
        });
        assert!(!matches!(refused, Ok(n) if n > 0), "a connection was served after stop: {refused:?}");
    }

    #[test]
    fn stop_gives_up_after_its_bound() {
        let dir = tempfile::tempdir().unwrap();
        let (server, addr) = start(dir.path());
        let client = TaskClient::new(ttrpc::Client::connect(&addr).unwrap());
        let _never = blocked_wait(&client);
        let t = Instant::now();
        assert!(!server.stop(Duration::from_millis(200)));
        assert!(t.elapsed() >= Duration::from_millis(200));
    }
}
