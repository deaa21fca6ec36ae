// log.c: leveled one-line logging. The level is set once at start-up; log_line may be called
// from any thread because each line is formatted into a local buffer and written in one call.
#include "train/base/log.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "train/base/sys.h"

static int log_level = LOG_INFO;

void log_set_level(int level) { log_level = level; }

int log_get_level(void) { return log_level; }

int log_parse_level(const char *s) {
    static const char *names[] = {"error", "warn", "info", "debug"};
    for (int i = 0; i < 4; i++)
        if (strcmp(s, names[i]) == 0) return i;
    return -1;
}

void log_line(int level, const char *mod, const char *fmt, ...) {
    if (level > log_level) return;
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    struct timespec now = sys_wall_time();
    struct tm tm;
    localtime_r(&now.tv_sec, &tm);
    fprintf(stderr, "%02d:%02d:%02d.%03d %c %s %s\n", tm.tm_hour, tm.tm_min, tm.tm_sec,
            (int)(now.tv_nsec / 1000000), "EWID"[level], mod, msg);
}
