# The C declarations the load generators call with the GIL released: BSD sockets, mmsg batching, and relaxed atomics.
#
# Everything here is `nogil`: these are plain libc calls and header macros, safe from any thread.
# Cython ships time, unistd, uio and errno declarations (cimport them from posix.* / libc.*);
# sockets and the Linux batching calls are not shipped, so they are declared here.

from libc.stdint cimport uint16_t, uint32_t
from posix.time cimport timespec
from posix.uio cimport iovec


cdef extern from "<sys/socket.h>" nogil:
    ctypedef unsigned int socklen_t
    ctypedef unsigned short sa_family_t

    struct sockaddr:
        sa_family_t sa_family

    struct msghdr:
        void *msg_name
        socklen_t msg_namelen
        iovec *msg_iov
        size_t msg_iovlen
        void *msg_control
        size_t msg_controllen
        int msg_flags

    # sendmmsg/recvmmsg are Linux (_GNU_SOURCE, which Python.h defines); msg_len is the
    # per-message byte count the kernel fills in.
    struct mmsghdr:
        msghdr msg_hdr
        unsigned int msg_len

    enum:
        AF_INET
        SOCK_STREAM
        SOCK_DGRAM
        SOCK_CLOEXEC
        SOL_SOCKET
        SO_REUSEADDR
        SO_RCVTIMEO
        SO_SNDBUF
        SO_RCVBUF
        SO_SNDBUFFORCE
        SO_RCVBUFFORCE
        MSG_DONTWAIT
        MSG_NOSIGNAL
        MSG_TRUNC
        MSG_WAITFORONE

    int socket(int domain, int type, int protocol)
    int bind(int fd, const sockaddr *addr, socklen_t len)
    int listen(int fd, int backlog)
    int accept4(int fd, sockaddr *addr, socklen_t *len, int flags)
    int connect(int fd, const sockaddr *addr, socklen_t len)
    ssize_t send(int fd, const void *buf, size_t n, int flags)
    ssize_t recv(int fd, void *buf, size_t n, int flags)
    int setsockopt(int fd, int level, int name, const void *val, socklen_t len)
    int getsockname(int fd, sockaddr *addr, socklen_t *len)
    int sendmmsg(int fd, mmsghdr *msgs, unsigned int n, int flags)
    int recvmmsg(int fd, mmsghdr *msgs, unsigned int n, int flags, timespec *timeout)


cdef extern from "<netinet/in.h>" nogil:
    struct in_addr:
        uint32_t s_addr

    struct sockaddr_in:
        sa_family_t sin_family
        uint16_t sin_port
        in_addr sin_addr

    enum:
        IPPROTO_IP
        IPPROTO_TCP
        IP_BIND_ADDRESS_NO_PORT  # bind() an address now, pick the port at connect() (Linux >= 4.2)

    uint16_t htons(uint16_t v)
    uint16_t ntohs(uint16_t v)


cdef extern from "<netinet/tcp.h>" nogil:
    enum:
        TCP_NODELAY


cdef extern from "<arpa/inet.h>" nogil:
    int inet_pton(int af, const char *src, void *dst)


# Counters and stop flags shared between threads. Relaxed ordering is enough: each value is an
# independent statistic or a "please stop" hint that is read again on every loop iteration.
cdef extern from *:
    """
    static inline void dl_atomic_add(long long *p, long long v) { __atomic_fetch_add(p, v, __ATOMIC_RELAXED); }
    static inline long long dl_atomic_load(const long long *p) { return __atomic_load_n(p, __ATOMIC_RELAXED); }
    static inline void dl_atomic_store(long long *p, long long v) { __atomic_store_n(p, v, __ATOMIC_RELAXED); }
    """
    void dl_atomic_add(long long *p, long long v) nogil
    long long dl_atomic_load(const long long *p) nogil
    void dl_atomic_store(long long *p, long long v) nogil
