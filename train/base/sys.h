// sys.h: the platform layer, shared by every layer: the clocks (a monotonic clock for durations
// and deadlines, the time of day for timestamps), condition variables with deadlines, a sleep,
// folders, durable writes, the running executable's path, close-on-exec sockets and the per-user
// state folder. Every call that differs between Linux and macOS lives in sys.c and nowhere else
// (`make lint` checks); building with -DSPARTAN_FORCE_PORTABLE makes sys.c take its POSIX-only
// branches on Linux too, so that the code macOS shares with them is tested there. Any thread.
#ifndef SYS_H
#define SYS_H

#include <pthread.h>
#include <stddef.h>
#include <time.h>

// sys_now_ms returns a monotonic time in milliseconds (CLOCK_MONOTONIC; only differences mean
// anything).
double sys_now_ms(void);

// sys_now_s is sys_now_ms in seconds.
double sys_now_s(void);

// sys_wall_time returns the time of day (CLOCK_REALTIME), for timestamps in logs and replies;
// never for durations or deadlines (it jumps when the clock is set).
struct timespec sys_wall_time(void);

// sys_cond_init initialises cv to time its waits by CLOCK_MONOTONIC, so that deadlines from
// sys_deadline hold when the time of day is set. macOS (and the portable build) has no
// pthread_condattr_setclock: there cv waits by CLOCK_REALTIME, and sys_deadline follows. The
// caller owns cv (pthread_cond_destroy).
void sys_cond_init(pthread_cond_t *cv);

// sys_deadline returns the absolute time ms (>= 0) milliseconds from now on the clock that
// sys_cond_init's condition variables wait by, for pthread_cond_timedwait on one of them.
struct timespec sys_deadline(double ms);

// sys_sleep_ms sleeps ms milliseconds (>= 0), resuming after signals. Only for waits whose point
// is the passing of time (a retry's back-off); a wait for a state change waits on a condition
// variable with sys_deadline instead.
void sys_sleep_ms(int ms);

// sys_mkdir_p creates dir and its missing parents (mode 0777 before the umask). Returns ERR_OK,
// or ERR_IO naming the folder that cannot be created or the path that exists but is not a folder.
int sys_mkdir_p(const char *dir);

// sys_read_file reads the whole file at path, at most max bytes, into *out (malloc'd, with a NUL
// after the *len bytes, which may hold NULs themselves); what names the file in messages
// ("hostfile"). Returns ERR_OK (the caller frees *out), ERR_IO naming the path and the system's
// reason when it cannot be opened or read, or ERR_INVAL when it is larger than max bytes. On
// failure *out is NULL.
int sys_read_file(const char *path, size_t max, const char *what, char **out, size_t *len);

// sys_fsync_durable flushes what was written to fd to stable storage, as fsync does, and returns
// what fsync returns: 0, or -1 with errno set (a drop-in, so that callers keep their messages and
// their errno checks). On macOS fsync only hands the data to the drive, whose cache may lose it
// at a power cut; there it uses fcntl(F_FULLFSYNC), which flushes the drive too, and falls back to
// fsync where the file system refuses that (ENOTSUP, EINVAL), as SQLite does. Every write that
// must survive a crash (checkpoints, data shards, downloads, the node ID) syncs with this. Any
// thread; retries after signals.
int sys_fsync_durable(int fd);

// sys_fsync_parent makes a rename or link to path durable: it opens the folder that holds path
// ("." when path has no '/') and syncs it with sys_fsync_durable. Returns ERR_OK, also when the
// file system cannot sync a folder (EINVAL, ENOTSUP: the rename is then as durable as it gets),
// or ERR_IO naming the folder and the system's reason. Any thread.
int sys_fsync_parent(const char *path);

// sys_exe_path writes the absolute path of the running executable into buf (n bytes, NUL
// terminated): /proc/self/exe on Linux, _NSGetExecutablePath on macOS. Returns ERR_OK, ERR_INVAL
// when it does not fit, or ERR_IO when the system cannot tell (the portable build always
// cannot); on failure buf holds "". Any thread.
int sys_exe_path(char *buf, size_t n);

// sys_socket is socket(2) with close-on-exec set, so that children started with exec never hold
// the socket (SOCK_CLOEXEC on Linux; macOS has no SOCK_CLOEXEC, so there fcntl sets FD_CLOEXEC
// right after, which leaves a window only for a fork in another thread at that moment). Returns
// the descriptor, which the caller closes, or -1 with errno set. Any thread.
int sys_socket(int domain, int type, int protocol);

// sys_state_home writes the per-user folder for state into buf (n bytes): $XDG_STATE_HOME if set,
// else $HOME/.local/state, or $HOME/Library/Application Support on macOS. Callers add their own
// "spartan/..." below it. Returns ERR_OK, or ERR_INVAL when neither variable is set or the path
// does not fit (buf then holds ""). Reads the environment; any thread, as long as no thread
// changes the environment meanwhile.
int sys_state_home(char *buf, size_t n);

#endif
