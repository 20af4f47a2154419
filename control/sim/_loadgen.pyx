# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Cython load generators and servers for TCP RR, TCP CRR and UDP packet rate; every per-transaction loop runs in C with the GIL released."""

# Contracts shared by everything below:
#  * No Python object is touched per packet or transaction. The GIL is held only to set up and tear
#    down sockets, to start threads (one per RR connection, never per transaction) and to build
#    the result dicts.
#  * Time is CLOCK_MONOTONIC in nanoseconds. Latencies go into a fixed histogram (100 ns buckets up
#    to 10 ms, plus an overflow count and the exact maximum), so memory does not grow with the run.
#  * Servers and the sink block in the kernel with a POLL_MS receive timeout and re-check a stop
#    flag on each wake-up, so stop() returns within about POLL_MS without signals or fd tricks.
#  * Errors that make a run meaningless (cannot connect, peer vanished mid-RR) raise OSError;
#    per-connection failures in CRR and per-batch failures in UDP are counted and reported.

import os
import threading

from libc.errno cimport (EADDRNOTAVAIL, EAGAIN, ECONNABORTED, ECONNREFUSED, ECONNRESET, EINTR,
                         EMFILE, ENFILE, ENOBUFS, ENOMEM, ETIMEDOUT, errno)
from libc.stdint cimport UINT64_MAX, uint64_t
from libc.stdlib cimport calloc, free, malloc
from libc.string cimport memset
from posix.time cimport CLOCK_MONOTONIC, clock_gettime, nanosleep, timespec, timeval
from posix.uio cimport iovec
from posix.unistd cimport close, usleep

# control/sim/_sys.pxd is cimported by its source-tree path: the build runs from the repository
# root, where `control.sim` is a package, while `dockline.control.sim` exists only after install
# (package_dir).
from control.sim._sys cimport (AF_INET, IP_BIND_ADDRESS_NO_PORT, IPPROTO_IP, IPPROTO_TCP, MSG_DONTWAIT,
                         MSG_NOSIGNAL, MSG_TRUNC, MSG_WAITFORONE, SO_RCVBUF, SO_RCVBUFFORCE,
                         SO_RCVTIMEO, SO_REUSEADDR, SO_SNDBUF, SO_SNDBUFFORCE, SOCK_CLOEXEC,
                         SOCK_DGRAM, SOCK_STREAM, SOL_SOCKET, TCP_NODELAY, accept4, bind,
                         connect, dl_atomic_add, dl_atomic_load, dl_atomic_store, getsockname,
                         htons, inet_pton, listen, mmsghdr, ntohs, recv, recvmmsg, send,
                         sendmmsg, setsockopt, sockaddr, sockaddr_in, socket, socklen_t)

cdef enum:
    BUCKET_NS = 100          # histogram resolution
    NBUCKETS = 100000        # 100 ns x 100 000 = 10 ms; slower samples land in `overflow`
    BATCH = 64               # messages per sendmmsg/recvmmsg call
    SINK_SLOT = 2048         # receive buffer per datagram; MSG_TRUNC still reports longer lengths
    SINK_NAP_NS = 50000      # sink pause when its queue is drained while traffic flows
    SINK_IDLE_NS = 10000000  # no datagram for this long: the sink blocks in recvmmsg again
    POLL_MS = 100            # how often blocked server/sink calls wake to look at the stop flag
    CLIENT_TIMEOUT_MS = 2000 # a client waiting this long for a reply declares the peer gone
    BACKLOG = 4096           # listen backlog (the kernel caps it at net.core.somaxconn)
    SOCKBUF = 4 << 20        # UDP socket buffers: absorb bursts without dominating the numbers
    RR_MAX = 1 << 20         # largest RR message
    RR_HDR = 4               # RR connections open with the message size, 4 bytes big-endian
    MODE_RR = 1
    MODE_CRR = 2

#: Public limits, re-exported for the front end's validation and docs.
HIST_BUCKET_NS = BUCKET_NS
HIST_MAX_NS = BUCKET_NS * NBUCKETS
UDP_BATCH = BATCH
UDP_MAX_PAYLOAD = 65507      # 65535 - 20 (IPv4) - 8 (UDP)
RR_MAX_SIZE = RR_MAX


# ---------------------------------------------------------------------------------------------
# Clock and latency histogram

cdef inline uint64_t now_ns() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)  # vDSO: no syscall, ~20 ns
    return <uint64_t>ts.tv_sec * 1000000000ULL + <uint64_t>ts.tv_nsec


cdef struct Hist:
    uint64_t *buckets        # NBUCKETS counters; bucket i holds [i*100 ns, (i+1)*100 ns)
    uint64_t overflow        # samples >= 10 ms
    uint64_t count
    uint64_t sum_ns
    uint64_t max_ns


cdef inline void hist_add(Hist *h, uint64_t ns) noexcept nogil:
    cdef uint64_t i = ns // BUCKET_NS
    if i < NBUCKETS:
        h.buckets[i] += 1
    else:
        h.overflow += 1
    h.count += 1
    h.sum_ns += ns
    if ns > h.max_ns:
        h.max_ns = ns


cdef uint64_t hist_quantile(const Hist *h, double q) noexcept nogil:
    """Smallest bucket upper edge with at least ceil(q * count) samples at or below it, clamped
    to the exact maximum (so never above the slowest sample); the maximum itself when the rank
    falls among the overflow samples; 0 for an empty histogram."""
    if h.count == 0:
        return 0
    cdef uint64_t rank = <uint64_t>(q * h.count)
    if <double>rank < q * h.count:
        rank += 1
    if rank < 1:
        rank = 1
    cdef uint64_t seen = 0
    cdef uint64_t i
    for i in range(NBUCKETS):
        seen += h.buckets[i]
        if seen >= rank:
            return min((i + 1) * BUCKET_NS, h.max_ns)
    return h.max_ns


cdef class Histogram:
    """Owner of one Hist; C code gets &self.h, Python gets summary()."""
    cdef Hist h

    def __cinit__(self):
        memset(&self.h, 0, sizeof(Hist))
        self.h.buckets = <uint64_t *>calloc(NBUCKETS, sizeof(uint64_t))
        if self.h.buckets == NULL:
            raise MemoryError()

    def __dealloc__(self):
        free(self.h.buckets)

    cdef void merge(self, Histogram other) noexcept:
        cdef uint64_t i
        for i in range(NBUCKETS):
            self.h.buckets[i] += other.h.buckets[i]
        self.h.overflow += other.h.overflow
        self.h.count += other.h.count
        self.h.sum_ns += other.h.sum_ns
        self.h.max_ns = max(self.h.max_ns, other.h.max_ns)

    def summary(self):
        """Latency statistics in microseconds: mean, p50, p90, p99, p999 (99.9th), max."""
        cdef const Hist *h = &self.h
        return {
            "mean_us": (h.sum_ns / h.count / 1000.0) if h.count else 0.0,
            "p50_us": hist_quantile(h, 0.50) / 1000.0,
            "p90_us": hist_quantile(h, 0.90) / 1000.0,
            "p99_us": hist_quantile(h, 0.99) / 1000.0,
            "p999_us": hist_quantile(h, 0.999) / 1000.0,
            "max_us": h.max_ns / 1000.0,
        }


# ---------------------------------------------------------------------------------------------
# Socket set-up (with the GIL; failures raise OSError naming the step)

cdef int _raise(int err, str what) except -1:
    raise OSError(err, f"{what}: {os.strerror(err)}")


cdef int _sockaddr(str ip, long port, sockaddr_in *sa) except -1:
    if not 0 <= port <= 65535:
        raise ValueError(f"port must be in 0..65535, got {port}")
    cdef bytes b = ip.encode()
    memset(sa, 0, sizeof(sockaddr_in))
    sa.sin_family = AF_INET
    sa.sin_port = htons(<unsigned short>port)
    if inet_pton(AF_INET, b, &sa.sin_addr) != 1:
        raise ValueError(f"not an IPv4 address: {ip!r}")
    return 0


cdef int _parse_bind(object spec, sockaddr_in *sa) except -1:
    """``"ip"`` or ``"ip:port"`` into sa; returns 1 when a source address was given, else 0."""
    if not spec:
        return 0
    ip, _, port = str(spec).partition(":")
    _sockaddr(ip, int(port) if port else 0, sa)
    return 1


cdef int _setint(int fd, int level, int name, int value) noexcept nogil:
    return setsockopt(fd, level, name, &value, sizeof(int))


cdef int _set_rcvtimeo(int fd, int ms) noexcept nogil:
    cdef timeval tv
    tv.tv_sec = ms // 1000
    tv.tv_usec = (ms % 1000) * 1000
    return setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv))


cdef void _set_buf(int fd, int force_name, int name, int size) noexcept nogil:
    # *BUFFORCE (root) ignores net.core.[rw]mem_max; the plain option is the unprivileged fallback.
    if _setint(fd, SOL_SOCKET, force_name, size) != 0:
        _setint(fd, SOL_SOCKET, name, size)


cdef int _open(int kind, sockaddr_in *src, bint has_src) except -1:
    cdef int fd = socket(AF_INET, kind | SOCK_CLOEXEC, 0)
    if fd < 0:
        _raise(errno, "socket")
    if has_src and bind(fd, <sockaddr *>src, sizeof(sockaddr_in)) != 0:
        err = errno
        close(fd)
        _raise(err, "bind source address")
    return fd


cdef int _listen_tcp(str ip, long port) except -1:
    cdef sockaddr_in sa
    _sockaddr(ip, port, &sa)
    cdef int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0)
    if fd < 0:
        _raise(errno, "socket")
    _setint(fd, SOL_SOCKET, SO_REUSEADDR, 1)
    if bind(fd, <sockaddr *>&sa, sizeof(sa)) != 0 or listen(fd, BACKLOG) != 0:
        err = errno
        close(fd)
        _raise(err, f"listen on {ip}:{port}")
    # Accepted sockets inherit the receive timeout (the kernel clones the listener's sock), so
    # every blocking call a server makes wakes up at least every POLL_MS.
    _set_rcvtimeo(fd, POLL_MS)
    return fd


cdef long _local_port(int fd):
    cdef sockaddr_in sa
    cdef socklen_t n = sizeof(sa)
    if getsockname(fd, <sockaddr *>&sa, &n) != 0:
        _raise(errno, "getsockname")
    return ntohs(sa.sin_port)


# ---------------------------------------------------------------------------------------------
# Exact-length I/O (nogil)

cdef ssize_t _send_all(int fd, const char *p, ssize_t n) noexcept nogil:
    """Send all n bytes: n, or -1 with errno set. EINTR is retried; SIGPIPE is never raised."""
    cdef ssize_t done = 0, r
    while done < n:
        r = send(fd, p + done, n - done, MSG_NOSIGNAL)
        if r < 0:
            if errno == EINTR:
                continue
            return -1
        done += r
    return n


cdef ssize_t _recv_all(int fd, char *p, ssize_t n, const long long *stop) noexcept nogil:
    """Receive exactly n bytes: n; 0 at EOF (even mid-message); -1 with errno set on error.

    EINTR is retried. EAGAIN (the SO_RCVTIMEO tick) is retried while *stop is clear, so servers
    wait for slow peers but still notice stop(); clients pass stop=NULL and get -1/EAGAIN, i.e.
    "the peer did not answer within the timeout"."""
    cdef ssize_t done = 0, r
    while done < n:
        r = recv(fd, p + done, n - done, 0)
        if r > 0:
            done += r
        elif r == 0:
            return 0
        elif errno == EINTR:
            continue
        elif errno == EAGAIN and stop != NULL and not dl_atomic_load(stop):
            continue
        else:
            return -1
    return n


# ---------------------------------------------------------------------------------------------
# TCP servers

cdef class TcpServer:
    """A listening TCP server for RR or CRR. Listening starts in the constructor, so the caller
    may announce readiness as soon as it returns; start() launches `acceptors` threads sharing the
    listener; stop() ends every thread and returns stats().

    RR: one thread per connection. The connection opens with the client's message size (RR_HDR
    bytes, big-endian, 1..RR_MAX_SIZE), then every message of exactly that size is echoed. The
    server thus needs no size option and counts whole transactions even when TCP splits them.
    CRR: per connection, receive 1 byte, send it back, close; all in the acceptor thread."""
    cdef int fd
    cdef int mode
    cdef int acceptors
    cdef long long stop_flag
    cdef long long connections    # accepted
    cdef long long transactions   # RR: echoes fully sent; CRR: connections that completed 1+1 bytes
    cdef long long errors         # accept failures; RR bad headers; CRR connections that failed
    cdef list acceptor_threads
    cdef list conn_threads        # RR only; appended by acceptors, so joined after them
    cdef object conn_lock         # guards conn_threads between acceptors

    def __init__(self, str ip, long port, str mode, int acceptors=1):
        if mode not in ("rr", "crr"):
            raise ValueError(f"mode must be 'rr' or 'crr', got {mode!r}")
        if acceptors < 1:
            raise ValueError(f"acceptors must be >= 1, got {acceptors}")
        self.fd = -1
        self.mode = MODE_RR if mode == "rr" else MODE_CRR
        self.acceptors = acceptors
        self.acceptor_threads = []
        self.conn_threads = []
        self.conn_lock = threading.Lock()
        self.fd = _listen_tcp(ip, port)

    @property
    def port(self):
        return _local_port(self.fd)

    def start(self):
        for i in range(self.acceptors):
            t = threading.Thread(target=self._accept_loop, name=f"loadgen-accept-{i}", daemon=True)
            t.start()
            self.acceptor_threads.append(t)
        return self

    def stop(self):
        dl_atomic_store(&self.stop_flag, 1)
        for t in self.acceptor_threads:
            t.join()
        for t in self.conn_threads:
            t.join()
        if self.fd >= 0:
            close(self.fd)
            self.fd = -1
        return self.stats()

    def stats(self):
        return {"connections": dl_atomic_load(&self.connections),
                "transactions": dl_atomic_load(&self.transactions),
                "errors": dl_atomic_load(&self.errors)}

    def __dealloc__(self):
        if self.fd >= 0:
            close(self.fd)

    cdef int _accept(self) noexcept nogil:
        """Next connection's fd, or -1 once stop is set or the listener is unusable."""
        cdef int c, err
        while not dl_atomic_load(&self.stop_flag):
            c = accept4(self.fd, NULL, NULL, SOCK_CLOEXEC)
            if c >= 0:
                dl_atomic_add(&self.connections, 1)
                return c
            err = errno
            if err == EAGAIN or err == EINTR or err == ECONNABORTED:
                continue
            dl_atomic_add(&self.errors, 1)
            if err == EMFILE or err == ENFILE or err == ENOBUFS or err == ENOMEM:
                usleep(1000)  # out of resources: back off instead of spinning
                continue
            return -1
        return -1

    def _accept_loop(self):
        cdef int c
        cdef char b
        if self.mode == MODE_CRR:
            # The whole CRR server loop is C: accept, 1 byte in, 1 byte out, close.
            with nogil:
                while True:
                    c = self._accept()
                    if c < 0:
                        break
                    if _recv_all(c, &b, 1, &self.stop_flag) == 1 and _send_all(c, &b, 1) == 1:
                        dl_atomic_add(&self.transactions, 1)
                    else:
                        dl_atomic_add(&self.errors, 1)
                    close(c)
            return
        while True:
            with nogil:
                c = self._accept()
            if c < 0:
                break
            _setint(c, IPPROTO_TCP, TCP_NODELAY, 1)
            t = threading.Thread(target=self._rr_conn, args=(c,), name="loadgen-rr", daemon=True)
            t.start()
            with self.conn_lock:
                self.conn_threads[:] = [x for x in self.conn_threads if x.is_alive()] + [t]

    def _rr_conn(self, int c):
        """Serve one RR connection (header, then echoes) until EOF, an error, or stop."""
        cdef unsigned char hdr[RR_HDR]
        cdef ssize_t size = 0
        cdef char *buf = NULL
        with nogil:
            if _recv_all(c, <char *>hdr, RR_HDR, &self.stop_flag) == RR_HDR:
                size = (<ssize_t>hdr[0] << 24) | (hdr[1] << 16) | (hdr[2] << 8) | hdr[3]
                if 1 <= size <= RR_MAX:
                    buf = <char *>malloc(size)
                if buf == NULL:
                    dl_atomic_add(&self.errors, 1)  # bad size or out of memory: hang up
            if buf != NULL:
                while _recv_all(c, buf, size, &self.stop_flag) == size:
                    if _send_all(c, buf, size) != size:
                        break
                    dl_atomic_add(&self.transactions, 1)
                free(buf)
            close(c)


# ---------------------------------------------------------------------------------------------
# TCP RR client

cdef int _rr_loop(int fd, char *buf, ssize_t size, uint64_t deadline, Hist *h) noexcept nogil:
    """Send size bytes, receive size bytes, record the round trip; until the deadline.
    Returns 0, or an errno (ECONNRESET stands for EOF from the server)."""
    cdef uint64_t t0 = now_ns(), t1
    cdef ssize_t r
    while True:
        if _send_all(fd, buf, size) < 0:
            return errno
        r = _recv_all(fd, buf, size, NULL)
        if r <= 0:
            return errno if r < 0 else ECONNRESET
        t1 = now_ns()
        hist_add(h, t1 - t0)
        if t1 >= deadline:
            return 0
        t0 = t1  # the next transaction starts where this one's clock read ended


def rr_client(str ip, long port, double duration, long size=1, object bind=None):
    """One TCP_NODELAY connection doing back-to-back size-byte request/response transactions for
    `duration` seconds (after the RR header, see TcpServer). Returns transactions, duration_s,
    tps, size and the latency summary (full round trip, microseconds). Raises OSError if the
    connection fails or a reply takes longer than CLIENT_TIMEOUT_MS."""
    if not 1 <= size <= RR_MAX:
        raise ValueError(f"size must be in 1..{RR_MAX}, got {size}")
    if duration <= 0:
        raise ValueError(f"duration must be > 0, got {duration}")
    cdef unsigned char hdr[RR_HDR]
    hdr[:] = [(size >> 24) & 0xFF, (size >> 16) & 0xFF, (size >> 8) & 0xFF, size & 0xFF]
    cdef sockaddr_in dst, src
    _sockaddr(ip, port, &dst)
    cdef bint has_src = _parse_bind(bind, &src)
    cdef int fd = _open(SOCK_STREAM, &src, has_src)
    cdef int rc, err = 0
    cdef uint64_t start, end, dur_ns = <uint64_t>(duration * 1e9)
    cdef Histogram hist = Histogram()
    cdef char *buf = <char *>calloc(size, 1)
    try:
        if buf == NULL:
            raise MemoryError()
        _setint(fd, IPPROTO_TCP, TCP_NODELAY, 1)
        _set_rcvtimeo(fd, CLIENT_TIMEOUT_MS)
        with nogil:
            rc = connect(fd, <sockaddr *>&dst, sizeof(dst))
            if rc == 0:
                rc = _send_all(fd, <char *>hdr, RR_HDR) != RR_HDR
            if rc != 0:
                err = errno
        if rc != 0:
            _raise(err, f"connect to {ip}:{port}")
        with nogil:
            start = now_ns()
            err = _rr_loop(fd, buf, size, start + dur_ns, &hist.h)
            end = now_ns()
        if err:
            _raise(ETIMEDOUT if err == EAGAIN else err, f"RR transaction with {ip}:{port}")
    finally:
        close(fd)
        free(buf)
    elapsed = (end - start) / 1e9
    out = {"transactions": hist.h.count, "duration_s": elapsed,
           "tps": hist.h.count / elapsed, "size": size}
    out.update(hist.summary())
    return out


# ---------------------------------------------------------------------------------------------
# TCP CRR client

cdef struct CrrJob:
    sockaddr_in dst
    sockaddr_in src
    bint has_src
    uint64_t deadline
    long long connections    # completed connect + 1 byte each way + close
    long long errors         # failed connections (other than EADDRNOTAVAIL)
    long long addr_busy      # connect() said EADDRNOTAVAIL: out of ephemeral ports for now
    int last_errno


cdef void _crr_loop(CrrJob *j, Hist *h) noexcept nogil:
    """Connect/request/response/close until the deadline; latency is socket() to close() done.

    No TCP_NODELAY: Nagle never delays the first segment on a connection. A failed connection
    costs a 1 ms pause, so a refusing or absent server is counted rather than spun on."""
    cdef int fd, err
    cdef ssize_t r
    cdef char b = b'x'
    cdef uint64_t t0
    while True:
        t0 = now_ns()
        if t0 >= j.deadline:
            return
        fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0)
        if fd < 0:
            err = errno
        else:
            _setint(fd, SOL_SOCKET, SO_REUSEADDR, 1)
            _set_rcvtimeo(fd, CLIENT_TIMEOUT_MS)
            err = 0
            if j.has_src:
                # Defer the port choice to connect() so the 4-tuple, not the source address
                # alone, has to be unique: far more ports available per second.
                _setint(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
                if bind(fd, <sockaddr *>&j.src, sizeof(sockaddr_in)) != 0:
                    err = errno
            if err == 0 and connect(fd, <sockaddr *>&j.dst, sizeof(sockaddr_in)) != 0:
                err = errno
            if err == 0 and send(fd, &b, 1, MSG_NOSIGNAL) != 1:
                err = errno
            if err == 0:
                r = _recv_all(fd, &b, 1, NULL)
                if r != 1:
                    err = errno if r < 0 else ECONNRESET  # r == 0: EOF before the reply
            close(fd)
        if err == 0:
            hist_add(h, now_ns() - t0)
            j.connections += 1
        elif err == EADDRNOTAVAIL:
            j.addr_busy += 1
            usleep(1000)
        else:
            j.errors += 1
            j.last_errno = err
            usleep(1000)


cdef class _CrrWorker:
    """One CRR client thread's private state: its job counters and its histogram."""
    cdef CrrJob job
    cdef Histogram hist

    def __cinit__(self):
        memset(&self.job, 0, sizeof(CrrJob))
        self.hist = Histogram()

    def run(self):
        with nogil:
            _crr_loop(&self.job, &self.hist.h)


def crr_client(str ip, long port, double duration, int parallel=1, object bind=None):
    """`parallel` threads, each looping connect / 1 byte request / 1 byte response / close for
    `duration` seconds. Returns connections, duration_s, cps, errors, addr_busy, last_error,
    parallel and the latency summary (socket() to close(), microseconds)."""
    if parallel < 1:
        raise ValueError(f"parallel must be >= 1, got {parallel}")
    if duration <= 0:
        raise ValueError(f"duration must be > 0, got {duration}")
    cdef sockaddr_in dst, src
    _sockaddr(ip, port, &dst)
    cdef bint has_src = _parse_bind(bind, &src)
    cdef uint64_t start = now_ns()
    cdef uint64_t deadline = start + <uint64_t>(duration * 1e9)
    cdef _CrrWorker w
    workers = []
    for _ in range(parallel):
        w = _CrrWorker()
        w.job.dst = dst
        w.job.src = src
        w.job.has_src = has_src
        w.job.deadline = deadline
        workers.append(w)
    threads = [threading.Thread(target=w.run, name="loadgen-crr", daemon=True) for w in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = (now_ns() - start) / 1e9
    cdef Histogram total = Histogram()
    connections = errors = addr_busy = last_errno = 0
    for w in workers:
        total.merge(w.hist)
        connections += w.job.connections
        errors += w.job.errors
        addr_busy += w.job.addr_busy
        last_errno = w.job.last_errno or last_errno
    out = {"connections": connections, "duration_s": elapsed, "cps": connections / elapsed,
           "errors": errors, "addr_busy": addr_busy,
           "last_error": os.strerror(last_errno) if last_errno else None, "parallel": parallel}
    out.update(total.summary())
    return out


# ---------------------------------------------------------------------------------------------
# UDP flood and sink

def udp_flood(str ip, long port, double duration, long size=18, object bind=None):
    """Send size-byte UDP payloads to ip:port in sendmmsg batches of UDP_BATCH for `duration`
    seconds. Returns sent, bytes, duration_s, pps, errors (batches refused with ECONNREFUSED,
    ENOBUFS or EAGAIN), size. `sent` counts datagrams the kernel accepted; loopback and veth
    drop silently when the receiver is full, so compare with the sink's count."""
    if not 0 <= size <= UDP_MAX_PAYLOAD:
        raise ValueError(f"size must be in 0..{UDP_MAX_PAYLOAD}, got {size}")
    if duration <= 0:
        raise ValueError(f"duration must be > 0, got {duration}")
    cdef sockaddr_in dst, src
    _sockaddr(ip, port, &dst)
    cdef bint has_src = _parse_bind(bind, &src)
    cdef int fd = _open(SOCK_DGRAM, &src, has_src)
    cdef char *payload = <char *>calloc(size if size else 1, 1)
    cdef mmsghdr msgs[BATCH]
    cdef iovec iov
    cdef int i, r, err = 0
    cdef long long sent = 0, errors = 0
    cdef uint64_t start, end, deadline
    try:
        if payload == NULL:
            raise MemoryError()
        _set_buf(fd, SO_SNDBUFFORCE, SO_SNDBUF, SOCKBUF)
        # connect() fixes the destination: no msg_name per message, and one route lookup.
        if connect(fd, <sockaddr *>&dst, sizeof(dst)) != 0:
            _raise(errno, f"connect UDP to {ip}:{port}")
        iov.iov_base = payload
        iov.iov_len = size
        memset(msgs, 0, sizeof(msgs))
        for i in range(BATCH):
            msgs[i].msg_hdr.msg_iov = &iov   # every message sends the same payload buffer
            msgs[i].msg_hdr.msg_iovlen = 1
        with nogil:
            start = now_ns()
            deadline = start + <uint64_t>(duration * 1e9)
            while now_ns() < deadline:
                r = sendmmsg(fd, msgs, BATCH, 0)
                if r > 0:
                    sent += r
                elif errno == EINTR:
                    continue
                elif errno == ECONNREFUSED or errno == ENOBUFS or errno == EAGAIN:
                    errors += 1  # no listener yet (ICMP), or a full queue: keep blasting
                else:
                    err = errno
                    break
            end = now_ns()
        if err:
            _raise(err, f"sendmmsg to {ip}:{port}")
    finally:
        close(fd)
        free(payload)
    elapsed = (end - start) / 1e9
    return {"sent": sent, "bytes": sent * size, "duration_s": elapsed, "pps": sent / elapsed,
            "errors": errors, "size": size}


cdef class UdpSink:
    """A bound UDP socket that counts datagrams and bytes with recvmmsg. Binding happens in the
    constructor (announce readiness after it returns); run() blocks until its duration passes
    or stop() is called from another thread, and may be called once.

    While datagrams flow, the sink drains its queue without blocking and naps SINK_NAP_NS when it
    is empty, instead of sleeping in recvmmsg. A sleeping reader costs the *sender* a wake-up per
    datagram (sock_def_readable runs in the sending or forwarding CPU's softirq): a quarter of
    the loopback sender's CPU on the 2-vCPU test VM. Nobody waits on a napping sink's socket, so
    delivery stays cheap.
    The 4 MB receive buffer holds thousands of small datagrams, far more than arrive in one nap.
    After SINK_IDLE_NS without traffic it blocks again, so an idle sink costs no CPU."""
    cdef int fd
    cdef long long stop_flag

    def __init__(self, str ip, long port):
        cdef sockaddr_in sa
        self.fd = -1
        _sockaddr(ip, port, &sa)
        self.fd = _open(SOCK_DGRAM, &sa, True)
        _set_buf(self.fd, SO_RCVBUFFORCE, SO_RCVBUF, SOCKBUF)
        _set_rcvtimeo(self.fd, POLL_MS)

    @property
    def port(self):
        return _local_port(self.fd)

    def stop(self):
        dl_atomic_store(&self.stop_flag, 1)

    def __dealloc__(self):
        if self.fd >= 0:
            close(self.fd)

    def run(self, double duration=0):
        """Receive for `duration` seconds (0: until stop()). Returns received, bytes, pps,
        duration_s and run_s. duration_s is the receiving interval: from the return of the
        first batch to the return of the last; pps counts the datagrams after the first batch
        over that interval (0 when fewer than two batches arrived). run_s is the whole call."""
        if self.fd < 0:
            raise ValueError("sink already ran")
        cdef char *slots = <char *>malloc(BATCH * SINK_SLOT)
        if slots == NULL:
            raise MemoryError()
        cdef mmsghdr msgs[BATCH]
        cdef iovec iovs[BATCH]
        cdef int i, r, err = 0
        cdef bint flowing
        cdef timespec nap
        nap.tv_sec = 0
        nap.tv_nsec = SINK_NAP_NS
        cdef long long received = 0, first_batch = 0, nbytes = 0
        cdef uint64_t start, t, first = 0, last = 0
        cdef uint64_t deadline = UINT64_MAX
        memset(msgs, 0, sizeof(msgs))
        for i in range(BATCH):
            iovs[i].iov_base = slots + i * SINK_SLOT
            iovs[i].iov_len = SINK_SLOT
            msgs[i].msg_hdr.msg_iov = &iovs[i]
            msgs[i].msg_hdr.msg_iovlen = 1
        with nogil:
            start = now_ns()
            if duration > 0:
                deadline = start + <uint64_t>(duration * 1e9)
            t = start
            while t < deadline and not dl_atomic_load(&self.stop_flag):
                # Flowing: take what is queued, never block. Idle: WAITFORONE blocks (up to
                # POLL_MS) for the first datagram, then takes whatever else is queued.
                # MSG_TRUNC: msg_len is the datagram's real size even beyond SINK_SLOT.
                flowing = received > 0 and t - last < SINK_IDLE_NS
                r = recvmmsg(self.fd, msgs, BATCH,
                             (MSG_DONTWAIT if flowing else MSG_WAITFORONE) | MSG_TRUNC, NULL)
                if r < 0 and errno != EAGAIN and errno != EINTR:
                    err = errno
                    break
                if r > 0:
                    t = now_ns()
                    if received == 0:
                        first = t
                        first_batch = r
                    last = t
                    received += r
                    for i in range(r):
                        nbytes += msgs[i].msg_len
                if flowing and r < BATCH:
                    nanosleep(&nap, NULL)  # queue drained: let it refill
                t = now_ns()
        free(slots)
        close(self.fd)
        self.fd = -1
        if err:
            _raise(err, "recvmmsg")
        interval = (last - first) / 1e9
        return {"received": received, "bytes": nbytes, "duration_s": interval,
                "pps": (received - first_batch) / interval if interval > 0 else 0.0,
                "run_s": (t - start) / 1e9}
