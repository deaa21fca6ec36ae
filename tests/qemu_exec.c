// qemu_exec.c: linked into the test binaries of the arm64 cross build (make test-arm64) only.
// Criterion's BoxFort starts every test by re-executing the binary (/proc/self/exe), and qemu-user
// hands execve to the host kernel, which cannot run an arm64 ELF without binfmt_misc. This execve
// (and execl) runs an arm64 target through $ARM64_QEMU instead; any other file, or any exec when
// ARM64_QEMU is unset (a real arm64 host), goes to the kernel unchanged. Being defined in the
// executable, it takes the place of libc's for libcriterion too. Any thread may call it.
#include <fcntl.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#define MAX_ARGS 64
#define EM_ARM64 183

extern char **environ;

// is_arm64_elf reports whether path starts with an ELF header for machine AArch64.
static int is_arm64_elf(const char *path) {
    unsigned char h[20];
    int fd = open(path, O_RDONLY);
    if (fd < 0) return 0;
    ssize_t n = read(fd, h, sizeof h);
    close(fd);
    return n == (ssize_t)sizeof h && memcmp(h, "\177ELF", 4) == 0 &&
           (h[18] | h[19] << 8) == EM_ARM64;
}

// execve: the exec that Debian's libcriterion calls. The real one is the system call, which qemu
// passes to the host; qemu's environment (QEMU_LD_PREFIX) travels in envp to the new qemu.
int execve(const char *path, char *const argv[], char *const envp[]) {
    const char *qemu = getenv("ARM64_QEMU");
    if (!qemu || !is_arm64_elf(path)) return (int)syscall(SYS_execve, path, argv, envp);

    // qemu -0 argv0 path argv1...: the guest sees the argv that a native exec would give it.
    const char *qargs[MAX_ARGS + 4];
    int q = 0;
    qargs[q++] = qemu;
    qargs[q++] = "-0";
    qargs[q++] = argv[0] ? argv[0] : path;
    qargs[q++] = path;
    for (int i = 1; argv[0] && argv[i] && q < MAX_ARGS + 3; i++)
        qargs[q++] = argv[i];
    qargs[q] = NULL;
    return (int)syscall(SYS_execve, qemu, qargs, envp);
}

// execl: upstream BoxFort's call, and the tests'; glibc's own would skip the execve above.
int execl(const char *path, const char *arg, ...) {
    const char *args[MAX_ARGS];
    int n = 0;
    va_list ap;
    va_start(ap, arg);
    for (const char *a = arg; a && n < MAX_ARGS - 1; a = va_arg(ap, const char *))
        args[n++] = a;
    va_end(ap);
    args[n] = NULL;
    return execve(path, (char *const *)args, environ);
}
