// log.h: one-line leveled logging to stderr. Each line is written with a single fprintf so
// lines from different threads never interleave. Format: `21:10:13.123 I train step=4 ...`.
#ifndef LOG_H
#define LOG_H

enum { LOG_ERROR = 0, LOG_WARN = 1, LOG_INFO = 2, LOG_DEBUG = 3 };

// log_set_level sets the most verbose level printed (default LOG_INFO). Call before threads start.
void log_set_level(int level);

// log_get_level returns the current level.
int log_get_level(void);

// log_parse_level maps "error", "warn", "info" or "debug" to a level, or returns -1.
int log_parse_level(const char *s);

// log_line writes one formatted line if level is enabled. Thread-safe; use the LOG_* macros.
void log_line(int level, const char *mod, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#define LOG_E(mod, ...) log_line(LOG_ERROR, mod, __VA_ARGS__)
#define LOG_W(mod, ...) log_line(LOG_WARN, mod, __VA_ARGS__)
#define LOG_I(mod, ...) log_line(LOG_INFO, mod, __VA_ARGS__)
#define LOG_D(mod, ...) log_line(LOG_DEBUG, mod, __VA_ARGS__)

#endif
