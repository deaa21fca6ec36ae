// sys.h: small operating-system helpers shared by every layer: a monotonic clock and
// creating a folder with its parents. Any thread.
#ifndef SYS_H
#define SYS_H

// sys_now_ms returns a monotonic time in milliseconds (CLOCK_MONOTONIC; only differences mean
// anything).
double sys_now_ms(void);

// sys_sleep_ms sleeps ms milliseconds (>= 0), resuming after signals.
void sys_sleep_ms(int ms);

// sys_mkdir_p creates dir and its missing parents (mode 0777 before the umask). Returns ERR_OK,
// or ERR_IO naming the folder that cannot be created or the path that exists but is not a folder.
int sys_mkdir_p(const char *dir);

#endif
