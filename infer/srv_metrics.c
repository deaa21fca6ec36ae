// srv_metrics.c: the server's Prometheus counters and histograms (requests by route and status,
// tokens, time to first token, time between tokens) and their text exposition for /metrics.
// Every function takes the metrics' own lock, so any thread may call them.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "infer/srv_impl.h"
#include "train/base/err.h"

// Histogram bucket upper bounds in seconds (the +Inf bucket is the count).
static const double bounds[] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                0.25,  0.5,    1,     2.5,  5,     10};
#define N_BOUNDS ((int)(sizeof bounds / sizeof bounds[0]))

// The statuses counted per route; anything else lands in the last column, "other".
static const int statuses[8] = {200, 400, 401, 404, 405, 413, 503, 0};

static const char *ep_names[SRV_EP_COUNT] = {"/",
                                             "/health",
                                             "/v1/models",
                                             "/v1/completions",
                                             "/v1/chat/completions",
                                             "/api/generate",
                                             "/api/chat",
                                             "/api/tags",
                                             "/metrics",
                                             "other"};

void srv_metrics_init(srv_metrics *m) {
    memset(m, 0, sizeof *m);
    pthread_mutex_init(&m->mu, NULL);
}

void srv_metrics_fini(srv_metrics *m) { pthread_mutex_destroy(&m->mu); }

void srv_metrics_request(srv_metrics *m, int ep, int status) {
    int col = 7;
    for (int i = 0; i < 7; i++)
        if (statuses[i] == status) col = i;
    pthread_mutex_lock(&m->mu);
    m->requests[ep][col]++;
    pthread_mutex_unlock(&m->mu);
}

static void hist_add(srv_hist *h, double v) {
    h->sum += v;
    h->count++;
    for (int i = 0; i < N_BOUNDS; i++)
        if (v <= bounds[i]) h->bucket[i]++;
}

void srv_metrics_token(srv_metrics *m, double ttft_s, double gap_s) {
    pthread_mutex_lock(&m->mu);
    if (ttft_s >= 0) hist_add(&m->ttft, ttft_s);
    if (gap_s >= 0) hist_add(&m->tpot, gap_s);
    pthread_mutex_unlock(&m->mu);
}

void srv_metrics_add(srv_metrics *m, int counter, uint64_t n) {
    pthread_mutex_lock(&m->mu);
    m->count[counter] += n;
    pthread_mutex_unlock(&m->mu);
}

static void put_hist(FILE *f, const char *name, const char *help, const srv_hist *h) {
    fprintf(f, "# HELP %s %s\n# TYPE %s histogram\n", name, help, name);
    for (int i = 0; i < N_BOUNDS; i++)
        fprintf(f, "%s_bucket{le=\"%g\"} %llu\n", name, bounds[i],
                (unsigned long long)h->bucket[i]);
    fprintf(f, "%s_bucket{le=\"+Inf\"} %llu\n%s_sum %.6f\n%s_count %llu\n", name,
            (unsigned long long)h->count, name, h->sum, name, (unsigned long long)h->count);
}

static void put_counter(FILE *f, const char *name, const char *help, uint64_t v) {
    fprintf(f, "# HELP %s %s\n# TYPE %s counter\n%s %llu\n", name, help, name, name,
            (unsigned long long)v);
}

static void put_gauge(FILE *f, const char *name, const char *help, long long v) {
    fprintf(f, "# HELP %s %s\n# TYPE %s gauge\n%s %lld\n", name, help, name, name, v);
}

char *srv_metrics_render(srv_metrics *m, int64_t step, int active, int queued, int paused,
                         int max_batch) {
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    if (!f) err_oom("open_memstream", 0);
    pthread_mutex_lock(&m->mu);
    fprintf(f, "# HELP spartan_requests_total HTTP requests by route and status.\n"
               "# TYPE spartan_requests_total counter\n");
    for (int e = 0; e < SRV_EP_COUNT; e++)
        for (int c = 0; c < 8; c++) {
            if (!m->requests[e][c]) continue;
            char st[16];
            if (statuses[c])
                snprintf(st, sizeof st, "%d", statuses[c]);
            else
                snprintf(st, sizeof st, "other");
            fprintf(f, "spartan_requests_total{endpoint=\"%s\",status=\"%s\"} %llu\n", ep_names[e],
                    st, (unsigned long long)m->requests[e][c]);
        }
    put_counter(f, "spartan_tokens_generated_total", "Tokens sampled for all requests.",
                m->count[SRV_M_TOKENS]);
    put_counter(f, "spartan_prompt_tokens_total", "Prompt tokens prefilled.",
                m->count[SRV_M_PROMPT]);
    put_counter(f, "spartan_requests_cancelled_total",
                "Generations stopped because the client went away.", m->count[SRV_M_CANCELLED]);
    put_counter(f, "spartan_reloads_total", "Checkpoints hot-reloaded.", m->count[SRV_M_RELOADS]);
    put_counter(f, "spartan_reload_failures_total", "Newer checkpoints refused (corrupt).",
                m->count[SRV_M_RELOAD_FAILS]);
    put_counter(f, "spartan_reload_polls_total", "Checks of the checkpoint folder for a newer one.",
                m->count[SRV_M_RELOAD_POLLS]);
    put_hist(f, "spartan_ttft_seconds", "Time from request to first token.", &m->ttft);
    put_hist(f, "spartan_token_latency_seconds", "Time between consecutive tokens of a stream.",
             &m->tpot);
    pthread_mutex_unlock(&m->mu);
    put_gauge(f, "spartan_checkpoint_step", "Training step of the checkpoint new requests use.",
              (long long)step);
    put_gauge(f, "spartan_active_slots", "Sequences being decoded.", active);
    put_gauge(f, "spartan_queued_requests", "Requests waiting for a slot.", queued);
    put_gauge(f, "spartan_paused_streams",
              "Streams paused until their client reads what was generated.", paused);
    put_gauge(f, "spartan_max_batch", "Decode slots.", max_batch);
    fclose(f);
    return text;
}
