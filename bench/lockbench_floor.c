/* SPDX-License-Identifier: MIT */
/*
 * The floor of filelock's protocol, as a lockbench peer ("protocol-floor" in
 * bench/lockbench.conf): the system calls that lock() makes, with none of
 * the library around them. What lock() costs above this driver is the
 * library's; what this driver costs above raw-c is the protocol's (the
 * identity check, the content check, the wake on release).
 *
 * acquire = open(O_NOFOLLOW | O_NONBLOCK, never truncated)
 *           + flock(LOCK_EX | LOCK_NB)
 *           + [busy, timeout > 0: fstat once, an inotify watch of the path on
 *              one instance kept for the process (the watch is kept too),
 *              then ppoll until a close event or the deadline, and
 *              flock(LOCK_NB) again]
 *           + fstat (uncontended) or nothing (asked at the contention), lstat:
 *              the path must still name the locked file
 *           + [an fstatfs when the device's major is 0 (tmpfs, btrfs, NFS):
 *              nothing is written on a pseudo filesystem]
 *           + pread unless the file is empty: only an empty file or a
 *              holder's line (a short line starting with a space) is
 *              overwritten, and nothing is written when it is its own
 *           + [ftruncate if the old line is longer, pwrite " <pid>\n"]
 * release = flock(LOCK_UN) + close
 *
 * No local queue, no queue between processes, no threads, no timer besides
 * the poll's.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "lockbench_driver.h"

#include <poll.h>
#include <sys/file.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/sysmacros.h>

static char g_line[32];
static int g_line_len;
static int g_inotify = -1;

typedef struct {
    int fd;
} floor_handle;

static int open_lock(const char* path) {
    return open(path, O_RDWR | O_CREAT | O_NOCTTY | O_NONBLOCK | O_NOFOLLOW | O_CLOEXEC, 0666);
}

/* Waits for the lock on `fd` until the deadline: 0 won, 1 timed out, -1 an
 * error. */
static int wait_release(int fd, const char* path, double timeout_s) {
    if (g_inotify < 0) g_inotify = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
    if (g_inotify < 0 || inotify_add_watch(g_inotify, path,
                                           IN_CLOSE_WRITE | IN_CLOSE_NOWRITE | IN_ATTRIB |
                                               IN_DELETE_SELF | IN_MOVE_SELF) < 0) {
        perror("inotify");
        return -1;
    }
    const long long deadline = lockbench_now_ns() + (long long)(timeout_s * 1e9);
    char events[4096];
    for (;;) {
        if (flock(fd, LOCK_EX | LOCK_NB) == 0) break;
        const long long left = deadline - lockbench_now_ns();
        if (left <= 0) return 1;
        struct timespec ts = {left / 1000000000LL, left % 1000000000LL};
        struct pollfd p = {g_inotify, POLLIN, 0};
        if (ppoll(&p, 1, &ts, NULL) > 0) {
            /* Attempt first, read the event after (as a lone waiter does). */
            const int won = flock(fd, LOCK_EX | LOCK_NB) == 0;
            (void)!read(g_inotify, events, sizeof events);
            if (won) break;
        }
    }
    return 0;
}

static void* floor_acquire(const char* path, double timeout_s, int* timed_out) {
    *timed_out = 0;
    for (;;) {
        const int fd = open_lock(path);
        if (fd < 0) {
            perror("open");
            return NULL;
        }
        struct stat held, named;
        int known = 0;
        if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
            const int busy = errno == EWOULDBLOCK;
            if (!busy || timeout_s <= 0 || fstat(fd, &held) != 0) {
                close(fd);
                *timed_out = busy && timeout_s <= 0;
                return NULL;
            }
            known = 1;
            const int waited = wait_release(fd, path, timeout_s);
            if (waited != 0) {
                close(fd);
                *timed_out = waited == 1;
                return NULL;
            }
        }
        if ((!known && fstat(fd, &held) != 0) || lstat(path, &named) != 0 ||
            held.st_dev != named.st_dev || held.st_ino != named.st_ino) {
            close(fd); /* replaced under us: again, on the file it names now */
            continue;
        }
        struct statfs fs;
        if (major(held.st_dev) == 0 && fstatfs(fd, &fs) != 0) {
            perror("fstatfs");
            close(fd);
            return NULL;
        }
        char old[1025];
        const ssize_t n = named.st_size == 0 ? 0 : pread(fd, old, sizeof old, 0);
        if (n < 0 || n > 1024 || (n > 0 && old[0] != ' ')) {
            fprintf(stderr, "%s: not a holder's line\n", path);
            close(fd);
            return NULL;
        }
        if (n != g_line_len || memcmp(old, g_line, (size_t)g_line_len) != 0) {
            if ((n > g_line_len && ftruncate(fd, g_line_len) != 0) ||
                pwrite(fd, g_line, (size_t)g_line_len, 0) != g_line_len) {
                perror("write");
                close(fd);
                return NULL;
            }
        }
        floor_handle* h = malloc(sizeof *h);
        if (!h) {
            close(fd);
            return NULL;
        }
        h->fd = fd;
        return h;
    }
}

static void floor_release(void* handle) {
    floor_handle* h = handle;
    flock(h->fd, LOCK_UN);
    close(h->fd);
    free(h);
}

int main(int argc, char** argv) {
    g_line_len = snprintf(g_line, sizeof g_line, " %d\n", (int)getpid());
    lockbench_ops ops = {"protocol-floor", floor_acquire, floor_release};
    return lockbench_main(argc, argv, &ops);
}
