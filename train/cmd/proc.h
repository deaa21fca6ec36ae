// proc.h: child processes for `spartan launch`: a shell command line run by /bin/sh in its own
// process group, its stdout and stderr read as lines through one pipe, optional text written to
// its stdin, and a poll loop over many children at once with a deadline. The launcher runs every
// ssh call through it (preflight, shipping, building, the peers themselves), so every remote step
// is bounded in time and can be stopped: closing a child's stdin is how a peer is asked to stop,
// proc_kill is how it is made to. Main thread only (it forks; SIGCHLD is not used).
#ifndef PROC_H
#define PROC_H

#include <stddef.h>
#include <sys/types.h>

#define PROC_LINE_MAX  4096       // longer output lines are cut into pieces of this size
#define PROC_INPUT_MAX (16 << 10) // proc_start's input

// A proc is started by proc_start; a zeroed one (calloc) is a proc that never started, and every
// call below treats it as ended and touches none of its (zero) descriptors.
typedef struct proc {
    pid_t pid;               // 0 = never started
    int in_fd;               // our end of the child's stdin, -1 when closed or not a pipe
    int out_fd;              // our end of the child's stdout+stderr, -1 after end of file
    int exited;              // 1 once reaped
    int status;              // waitpid status once exited
    size_t len;              // bytes of an unfinished line in buf
    char buf[PROC_LINE_MAX]; // the unfinished line
} proc;

// proc_start runs `/bin/sh -c cmd` as a child in a process group of its own (so a terminal's
// Ctrl-C reaches the launcher only, and proc_kill reaches a whole pipeline). stdin_mode: 0 = the
// child reads /dev/null; 1 = a pipe whose write end is p->in_fd (proc_close_stdin ends it);
// with input non-NULL, those len bytes (at most PROC_INPUT_MAX, what every pipe holds, so the
// call never blocks) are written to the pipe first and, when stdin_mode is 0, it is closed after
// them. Returns ERR_OK, or ERR_IO naming the system call that failed.
int proc_start(proc *p, const char *cmd, int stdin_mode, const char *input, size_t len);

// proc_close_stdin closes the write end of the child's stdin (end of file for the child).
// Idempotent.
void proc_close_stdin(proc *p);

// proc_kill sends sig to the child's process group (every process of a pipeline). No-op once
// the child has exited.
void proc_kill(proc *p, int sig);

// proc_line_fn receives one complete output line (without its newline) of child i.
typedef void (*proc_line_fn)(void *ctx, int i, const char *line);

// proc_poll waits up to timeout_ms (>= 0) for output of ps[0..n) and hands each complete line to
// fn (and a last unterminated line at end of file); children whose output has ended are reaped
// (their exited and status set). It returns when timeout_ms has passed, when every child has
// exited, or early when a signal interrupts the wait. Returns the number of children that have
// not exited.
int proc_poll(proc *ps, int n, int timeout_ms, proc_line_fn fn, void *ctx);

// proc_describe writes what a wait status means ("exit 0", "exit 3", "killed by SIGKILL") to
// buf (n bytes).
void proc_describe(int status, char *buf, size_t n);

// proc_free closes the child's descriptors; a child still running is killed (SIGKILL to its
// group) and reaped. NULL-safe and idempotent.
void proc_free(proc *p);

// proc_run runs cmd to completion with a deadline: output lines go to fn (may be NULL), input
// (may be NULL) to its stdin. After timeout_ms it is killed (SIGTERM, then SIGKILL 1 s later).
// Returns the wait status, or -1 when it could not start (error set), or -2 when it was killed
// for the deadline.
int proc_run(const char *cmd, const char *input, size_t len, int timeout_ms, proc_line_fn fn,
             void *ctx);

#endif
