// proc.c: child processes with line-buffered output for the launcher (proc.h). Invariant: a
// started proc (pid > 0) owns out_fd until end of file and in_fd until proc_close_stdin;
// proc_free leaves no process or descriptor behind. A proc that never started (zeroed, pid 0)
// owns nothing: its zero descriptors are not ours (closing "fd 0" of an unstarted proc once
// closed the launcher's stdin, and then a live pipe that took its number).
#include "train/cmd/proc.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "train/base/err.h"
#include "train/base/sys.h"

int proc_start(proc *p, const char *cmd, int stdin_mode, const char *input, size_t len) {
    memset(p, 0, sizeof *p);
    p->in_fd = p->out_fd = -1;
    ASSERT(!input || len <= PROC_INPUT_MAX);
    int out[2], in[2] = {-1, -1};
    if (pipe(out) != 0) return err_set(ERR_IO, "launch: pipe: %s", strerror(errno));
    if ((stdin_mode || input) && pipe(in) != 0) {
        close(out[0]);
        close(out[1]);
        return err_set(ERR_IO, "launch: pipe: %s", strerror(errno));
    }
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0) {
        int e = errno;
        close(out[0]);
        close(out[1]);
        if (in[0] >= 0) close(in[0]), close(in[1]);
        return err_set(ERR_IO, "launch: fork: %s", strerror(e));
    }
    if (pid == 0) { // the child: its own group, default signals, the pipes as stdio
        setpgid(0, 0);
        signal(SIGINT, SIG_DFL);
        signal(SIGTERM, SIG_DFL);
        signal(SIGPIPE, SIG_DFL);
        // The pipes may have taken descriptors 0-2 (a launcher started with its stdin closed):
        // copy the child's ends above 2 and close every original before placing them.
        int nul = in[0] >= 0 ? -1 : open("/dev/null", O_RDONLY);
        int i0 = fcntl(in[0] >= 0 ? in[0] : nul, F_DUPFD, 3), o1 = fcntl(out[1], F_DUPFD, 3);
        int orig[] = {nul, in[0], in[1], out[0], out[1]};
        for (int k = 0; k < 5; k++)
            if (orig[k] >= 0) close(orig[k]);
        if (i0 < 0 || o1 < 0 || dup2(i0, 0) < 0 || dup2(o1, 1) < 0 || dup2(o1, 2) < 0) _exit(127);
        close(i0);
        close(o1);
        execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
        _exit(127);
    }
    setpgid(pid, pid); // also here, so the group exists before any proc_kill
    close(out[1]);
    p->pid = pid;
    p->out_fd = out[0];
    fcntl(p->out_fd, F_SETFD, FD_CLOEXEC);
    if (in[0] >= 0) {
        close(in[0]);
        p->in_fd = in[1];
        fcntl(p->in_fd, F_SETFD, FD_CLOEXEC);
        // the child may exit before reading: a write then fails with EPIPE, not a signal
        struct sigaction ign = {.sa_handler = SIG_IGN}, old;
        sigaction(SIGPIPE, &ign, &old);
        for (size_t off = 0; input && off < len;) {
            ssize_t w = write(p->in_fd, input + off, len - off);
            if (w < 0 && errno == EINTR) continue;
            if (w <= 0) break;
            off += (size_t)w;
        }
        sigaction(SIGPIPE, &old, NULL);
        if (!stdin_mode) proc_close_stdin(p);
    }
    return ERR_OK;
}

void proc_close_stdin(proc *p) {
    if (p->pid > 0 && p->in_fd >= 0) close(p->in_fd);
    p->in_fd = -1;
}

void proc_kill(proc *p, int sig) {
    if (p->pid > 0 && !p->exited) kill(-p->pid, sig);
}

// flush_line hands buf[0..len) to fn as one line and empties the buffer.
static void flush_line(proc *p, int i, proc_line_fn fn, void *ctx) {
    p->buf[p->len] = 0;
    if (fn) fn(ctx, i, p->buf);
    p->len = 0;
}

// read_out reads what is ready on p's output and hands over its complete lines; at end of file
// it closes the pipe.
static void read_out(proc *p, int i, proc_line_fn fn, void *ctx) {
    char tmp[8192];
    ssize_t r = read(p->out_fd, tmp, sizeof tmp);
    if (r < 0 && (errno == EINTR || errno == EAGAIN)) return;
    if (r <= 0) {
        if (p->len) flush_line(p, i, fn, ctx);
        close(p->out_fd);
        p->out_fd = -1;
        return;
    }
    for (ssize_t k = 0; k < r; k++) {
        if (tmp[k] == '\n') {
            flush_line(p, i, fn, ctx);
        } else if (tmp[k] != '\r') {
            p->buf[p->len++] = tmp[k];
            if (p->len == sizeof p->buf - 1) flush_line(p, i, fn, ctx);
        }
    }
}

// reap collects p's exit status once its output has ended (a child may close its output and
// linger: then it is polled again at the next call).
static void reap(proc *p) {
    if (p->pid <= 0 || p->exited || p->out_fd >= 0) return;
    int st;
    pid_t w = waitpid(p->pid, &st, WNOHANG);
    if (w == p->pid) {
        p->exited = 1;
        p->status = st;
        proc_close_stdin(p);
    }
}

int proc_poll(proc *ps, int n, int timeout_ms, proc_line_fn fn, void *ctx) {
    struct pollfd *fds = xcalloc((size_t)(n ? n : 1), sizeof *fds);
    double end = sys_now_ms() + timeout_ms;
    int left = 0;
    for (;;) {
        int nf = 0, lingering = 0;
        left = 0;
        for (int i = 0; i < n; i++) {
            reap(&ps[i]);
            if (ps[i].pid > 0 && !ps[i].exited) left++;
            if (ps[i].pid > 0 && ps[i].out_fd >= 0)
                fds[nf++] = (struct pollfd){.fd = ps[i].out_fd, .events = POLLIN};
            else if (ps[i].pid > 0 && !ps[i].exited)
                lingering++;
        }
        double now = sys_now_ms();
        if (!left || now >= end) break;
        int wait = (int)(end - now) + 1;
        if (lingering && wait > 20) wait = 20; // output closed, process not yet gone
        int r = poll(fds, (nfds_t)nf, wait);
        if (r < 0 && errno == EINTR) {
            left = -1;
            break;
        }
        for (int i = 0, k = 0; i < n && r > 0; i++) {
            if (ps[i].pid <= 0 || ps[i].out_fd < 0) continue;
            if (fds[k].fd == ps[i].out_fd && fds[k].revents) read_out(&ps[i], i, fn, ctx);
            k++;
        }
    }
    free(fds);
    if (left < 0) { // interrupted: count again
        left = 0;
        for (int i = 0; i < n; i++)
            left += ps[i].pid > 0 && !ps[i].exited;
    }
    return left;
}

void proc_describe(int status, char *buf, size_t n) {
    if (WIFEXITED(status)) {
        snprintf(buf, n, "exit %d", WEXITSTATUS(status));
    } else if (WIFSIGNALED(status)) {
        const char *name = WTERMSIG(status) == SIGKILL   ? "SIGKILL"
                           : WTERMSIG(status) == SIGTERM ? "SIGTERM"
                           : WTERMSIG(status) == SIGINT  ? "SIGINT"
                           : WTERMSIG(status) == SIGSEGV ? "SIGSEGV"
                           : WTERMSIG(status) == SIGABRT ? "SIGABRT"
                                                         : NULL;
        if (name)
            snprintf(buf, n, "killed by %s", name);
        else
            snprintf(buf, n, "killed by signal %d", WTERMSIG(status));
    } else {
        snprintf(buf, n, "status %d", status);
    }
}

void proc_free(proc *p) {
    if (!p) return;
    proc_close_stdin(p);
    if (p->pid > 0 && p->out_fd >= 0) close(p->out_fd);
    p->out_fd = -1;
    if (p->pid > 0 && !p->exited) {
        kill(-p->pid, SIGKILL);
        int st;
        while (waitpid(p->pid, &st, 0) < 0 && errno == EINTR) {
        }
        p->exited = 1;
        p->status = st;
    }
}

int proc_run(const char *cmd, const char *input, size_t len, int timeout_ms, proc_line_fn fn,
             void *ctx) {
    proc p;
    if (proc_start(&p, cmd, 0, input, len)) return -1;
    double end = sys_now_ms() + timeout_ms;
    int killed = 0;
    while (!p.exited) {
        double left = end - sys_now_ms();
        if (left <= 0) {
            if (killed == 0) proc_kill(&p, SIGTERM);
            if (killed == 1) proc_kill(&p, SIGKILL);
            if (killed < 2) killed++;
            end = sys_now_ms() + 1000;
            left = 1000;
        }
        proc_poll(&p, 1, (int)left, fn, ctx);
    }
    int st = p.status;
    proc_free(&p);
    return killed ? -2 : st;
}
