// sys.h: small operating-system helpers shared by every layer: the clocks (a monotonic clock for
// durations and deadlines, the time of day for timestamps), condition variables that wait on the
// monotonic clock, a sleep, and creating a folder with its parents. Every other file takes its
// time from here. Any thread.
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
// sys_deadline hold when the time of day is set. The caller owns cv (pthread_cond_destroy).
void sys_cond_init(pthread_cond_t *cv);

// sys_deadline returns the absolute CLOCK_MONOTONIC time ms (>= 0) milliseconds from now, for
// pthread_cond_timedwait on a condition variable made by sys_cond_init.
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

#endif
