/* A filesystem fault injector in the spirit of SQLite's crash tests, loaded with LD_PRELOAD.
 *
 * It counts the writes (write, pwrite, writev, pwritev) to files under one folder and, at the N-th,
 * fails it with ENOSPC (and every write after it: a full disk stays full), fails it with EIO (that
 * write only), or SIGKILLs the process before the bytes land. Python drives it through ctypes:
 *   rlt_fault_arm(root, n, kind)   kind 0 counts only, 1 ENOSPC, 2 EIO, 3 kill
 *   rlt_fault_count()              writes under root since the last arm
 * Writes go through libc's symbols here (CPython's FileIO, Arrow's file streams, libstdc++'s
 * filebuf under torch.save), so every writer of the project is seen. See tests/test_faults.py.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>

static char root[4096];
static size_t root_len;
static long count;
static long fault_at;
static int kind;

void rlt_fault_arm(const char *folder, long n, int fault_kind) {
    snprintf(root, sizeof root, "%s", folder);
    root_len = strlen(root);
    count = 0;
    fault_at = n;
    kind = fault_kind;
}

long rlt_fault_count(void) { return count; }

static int under_root(int fd) {
    char link[64], target[4096];
    if (root_len == 0) return 0;
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, target, sizeof target - 1);
    if (n < 0) return 0;
    target[n] = 0;
    return strncmp(target, root, root_len) == 0 && (target[root_len] == '/' || target[root_len] == 0);
}

/* 0 to let the write through, else the errno to fail it with. */
static int fault(int fd) {
    if (!under_root(fd)) return 0;
    count++;
    if (fault_at <= 0 || kind == 0 || count < fault_at) return 0;
    if (kind == 3) kill(getpid(), SIGKILL);
    if (kind == 1) return ENOSPC;
    return count == fault_at ? EIO : 0;
}

typedef ssize_t (*write_fn)(int, const void *, size_t);
typedef ssize_t (*pwrite_fn)(int, const void *, size_t, off_t);
typedef ssize_t (*writev_fn)(int, const struct iovec *, int);
typedef ssize_t (*pwritev_fn)(int, const struct iovec *, int, off_t);

/* libc's own function of that name, looked up once. */
#define NEXT(name, type) static type real = 0; if (!real) real = (type)dlsym(RTLD_NEXT, name)

ssize_t write(int fd, const void *buf, size_t size) {
    NEXT("write", write_fn);
    int e = fault(fd);
    if (e) { errno = e; return -1; }
    return real(fd, buf, size);
}

ssize_t pwrite(int fd, const void *buf, size_t size, off_t offset) {
    NEXT("pwrite", pwrite_fn);
    int e = fault(fd);
    if (e) { errno = e; return -1; }
    return real(fd, buf, size, offset);
}

ssize_t pwrite64(int fd, const void *buf, size_t size, off_t offset) {
    NEXT("pwrite64", pwrite_fn);
    int e = fault(fd);
    if (e) { errno = e; return -1; }
    return real(fd, buf, size, offset);
}

ssize_t writev(int fd, const struct iovec *iov, int n) {
    NEXT("writev", writev_fn);
    int e = fault(fd);
    if (e) { errno = e; return -1; }
    return real(fd, iov, n);
}

ssize_t pwritev(int fd, const struct iovec *iov, int n, off_t offset) {
    NEXT("pwritev", pwritev_fn);
    int e = fault(fd);
    if (e) { errno = e; return -1; }
    return real(fd, iov, n, offset);
}
