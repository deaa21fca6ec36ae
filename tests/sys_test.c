// sys_test.c: the platform layer (train/base/sys.c): durable syncs of files and folders, the
// executable's path, close-on-exec sockets, the state folder, and condition-variable deadlines
// on the clock sys_cond_init picks. The Makefile builds this file twice: as sys_test against the
// native build, and as sys_portable_test against sys.c built with -DSPARTAN_FORCE_PORTABLE, the
// POSIX-only branches that macOS shares (CLOCK_REALTIME waits, socket + FD_CLOEXEC, no
// /proc/self/exe). The macOS-only calls (F_FULLFSYNC, _NSGetExecutablePath) run on a Mac only.
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "tests/test_util.h"
#include "train/base/err.h"
#include "train/base/sys.h"

// What this binary's sys.c was built as (the same test of the macros as sys.c's).
#if defined(SPARTAN_FORCE_PORTABLE)
#define BUILT_AS "portable"
#elif defined(__linux__)
#define BUILT_AS "linux"
#elif defined(__APPLE__)
#define BUILT_AS "macos"
#else
#define BUILT_AS "portable"
#endif

TestSuite(sys, .timeout = 30);

Test(sys, fsync_durable_syncs_a_written_file_and_reports_a_bad_descriptor) {
    char *dir = tu_tmpdir("sys-fsync");
    char path[512];
    snprintf(path, sizeof path, "%s/f", dir);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    cr_assert_geq(fd, 0);
    cr_assert_eq(write(fd, "abc", 3), 3);
    cr_assert_eq(sys_fsync_durable(fd), 0, "%s", strerror(errno));
    close(fd);
    errno = 0;
    cr_assert_eq(sys_fsync_durable(fd), -1);
    cr_assert_eq(errno, EBADF, "errno %d (%s)", errno, strerror(errno));
    tu_rm_rf(dir);
    free(dir);
}

Test(sys, fsync_parent_syncs_the_folder_that_holds_a_path) {
    char *dir = tu_tmpdir("sys-parent");
    char path[512];
    snprintf(path, sizeof path, "%s/renamed.h5", dir);
    cr_assert_eq(tu_write_file(path, "x", 1), 0);
    cr_assert_eq(sys_fsync_parent(path), ERR_OK, "%s", err_msg());
    cr_assert_eq(sys_fsync_parent("no-slash"), ERR_OK, "the working folder: %s", err_msg());
    cr_assert_eq(sys_fsync_parent("/top"), ERR_OK, "the root: %s", err_msg());
    snprintf(path, sizeof path, "%s/missing/f", dir);
    cr_assert_eq(sys_fsync_parent(path), ERR_IO);
    cr_assert(strstr(err_msg(), "missing") && strstr(err_msg(), "No such file"), "%s", err_msg());
    tu_rm_rf(dir);
    free(dir);
}

Test(sys, exe_path_names_this_test_binary) {
    char exe[4096];
    int rc = sys_exe_path(exe, sizeof exe);
    if (!strcmp(BUILT_AS, "portable")) {
        cr_assert_eq(rc, ERR_IO);
        cr_assert_str_eq(exe, "");
        return;
    }
    cr_assert_eq(rc, ERR_OK, "%s", err_msg());
    cr_assert_eq(exe[0], '/', "%s", exe);
    const char *base = strrchr(exe, '/') + 1;
    cr_assert(!strcmp(base, "sys_test"), "%s", exe);
    char tiny[4];
    cr_assert_eq(sys_exe_path(tiny, sizeof tiny), ERR_INVAL);
    cr_assert_str_eq(tiny, "");
}

Test(sys, socket_is_close_on_exec) {
    int fd = sys_socket(AF_INET, SOCK_STREAM, 0);
    cr_assert_geq(fd, 0, "%s", strerror(errno));
    cr_assert(fcntl(fd, F_GETFD) & FD_CLOEXEC);
    close(fd);
    fd = sys_socket(AF_INET, SOCK_DGRAM, 0);
    cr_assert_geq(fd, 0, "%s", strerror(errno));
    cr_assert(fcntl(fd, F_GETFD) & FD_CLOEXEC);
    close(fd);
    errno = 0;
    cr_assert_eq(sys_socket(-1, SOCK_STREAM, 0), -1);
    cr_assert_neq(errno, 0);
}

Test(sys, state_home_is_xdg_then_the_platforms_folder_under_home) {
    char buf[256];
    setenv("XDG_STATE_HOME", "/x/state", 1);
    setenv("HOME", "/home/u", 1);
    cr_assert_eq(sys_state_home(buf, sizeof buf), ERR_OK, "%s", err_msg());
    cr_assert_str_eq(buf, "/x/state");
    unsetenv("XDG_STATE_HOME");
    cr_assert_eq(sys_state_home(buf, sizeof buf), ERR_OK, "%s", err_msg());
    if (!strcmp(BUILT_AS, "macos"))
        cr_assert_str_eq(buf, "/home/u/Library/Application Support");
    else
        cr_assert_str_eq(buf, "/home/u/.local/state");
    cr_assert_eq(sys_state_home(buf, 8), ERR_INVAL);
    cr_assert_str_eq(buf, "");
    unsetenv("HOME");
    cr_assert_eq(sys_state_home(buf, sizeof buf), ERR_INVAL);
    cr_assert(strstr(err_msg(), "HOME"), "%s", err_msg());
}

Test(sys, a_deadline_wait_times_out_on_time) {
    pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
    pthread_cond_t cv;
    sys_cond_init(&cv);
    pthread_mutex_lock(&mu);
    double t0 = sys_now_ms();
    struct timespec dl = sys_deadline(80);
    int r = 0;
    while (r == 0) // no one signals: only spurious wake-ups return 0
        r = pthread_cond_timedwait(&cv, &mu, &dl);
    double ms = sys_now_ms() - t0;
    pthread_mutex_unlock(&mu);
    cr_assert_eq(r, ETIMEDOUT);
    // A deadline on the wrong clock would return at once or after decades (loose: CI is noisy).
    cr_assert(ms >= 70 && ms < 2000, "waited %.1f ms for an 80 ms deadline", ms);
    pthread_cond_destroy(&cv);
    pthread_mutex_destroy(&mu);
}
