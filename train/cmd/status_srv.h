// status_srv.h: the status server of `spartan train` (net.status_port): GET /status (JSON, with
// a history of the last STATUS_HIST steps), GET /metrics (Prometheus text) and GET / (the
// cluster page, which polls the /status of several peers), over infer/http.h. The trainer thread
// publishes a snapshot once per step; the daemon thread copies it out under the same mutex and
// formats the reply outside it, so a client never holds up a step for more than that copy.
#ifndef STATUS_SRV_H
#define STATUS_SRV_H

#include <stdint.h>

#include "train/base/cfg.h"
#include "train/sync.h"

#define STATUS_HIST 512 // steps kept for the loss curves of /status

typedef struct status_srv status_srv;

// What /status shows: plain data filled by the trainer loop.
typedef struct status_snap {
    int rank, world;      // this peer; the ranks its group may hold (1 alone)
    int step, max_iters;  // optimizer steps completed; the run's last step
    float loss, lr, norm; // of the last step
    float val_loss;       // the last evaluation (NAN: none yet), at val_step
    int val_step;
    double tok_s;                 // tokens/s of the last step
    double elapsed_s;             // since the loop started
    char ckpt[CFG_PATH_MAX + 32]; // the last checkpoint written ("": none), at ckpt_step
    int ckpt_step;
    train_sync_metrics sync; // the sync modules' report of the last step (zero alone)
} status_snap;

// One point of the history: a step's loss, the val loss if it was evaluated (NAN otherwise) and
// the bytes sent plus received so far.
typedef struct status_point {
    int step;
    float loss, val_loss;
    uint64_t bytes;
} status_point;

// status_srv_create serves on host:port (port 0: an ephemeral one, see status_srv_port). Until
// the first status_srv_publish, /status shows step 0. On success the caller owns *out
// (status_srv_destroy). Returns ERR_OK or http_create's errors ("cannot listen on HOST:PORT:
// REASON"). Trainer thread.
int status_srv_create(status_srv **out, const char *host, int port);

// status_srv_port returns the bound port. Any thread.
int status_srv_port(const status_srv *s);

// status_srv_publish copies snap (borrowed) as what the server shows, and appends a point to the
// history when snap->step is past the last point's step (a val loss given for the last point's
// step is filled in). Never waits for a client beyond the daemon's copy. Trainer thread.
void status_srv_publish(status_srv *s, const status_snap *snap);

// status_json formats snap and the history points hist(n) (oldest first) as the /status JSON
// object; status_prometheus formats snap as Prometheus text (spartan_train_*, spartan_net_*,
// and spartan_<name> for each sync metric). The caller frees the string. Any thread.
char *status_json(const status_snap *snap, const status_point *hist, int n);
char *status_prometheus(const status_snap *snap);

// status_srv_destroy stops the server and frees it. NULL-safe. Trainer thread.
void status_srv_destroy(status_srv *s);

// The cluster page served at / (train/cmd/cluster_page.c): HTML and JavaScript, no external
// files.
extern const char status_cluster_page[];

#endif
