/* Bare pipe ping-pong: the physical floor of one request/response between two
 * processes over a pair of pipes, N times.
 *
 * Usage: pingpong N [MODE]
 *   bare        parent: write 1 byte, read 1 byte; child echoes it (the floor)
 *   pin         bare, both processes pinned to CPU 0
 *   poll        procpool-shaped parent turn: poll() on 4 fds (2 idle signal pipes,
 *               child stdout, child stderr), read(64 KiB buf), write a 48-byte line;
 *               child reads a 48-byte line, writes a 39-byte line
 *   poll-wait4  poll, plus wait4(child, WNOHANG) every turn (what procpool does today)
 * Prints: ns per round trip. */
#define _GNU_SOURCE
#include <poll.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

int main(int argc, char **argv) {
    long n = argc > 1 ? atol(argv[1]) : 100000;
    const char *mode = argc > 2 ? argv[2] : "bare";
    int shaped = strncmp(mode, "poll", 4) == 0;
    int reap = strcmp(mode, "poll-wait4") == 0;
    int down[2], up[2], err[2], sig1[2], sig2[2];
    static char buf[65536];
    const char task[] = "{\"type\":\"task\",\"id\":1,\"attempt\":1,\"input\":null}\n"; /* 48 */
    const char result[] = "{\"type\":\"result\",\"id\":1,\"output\":null}\n";         /* 39 */
    size_t tlen = shaped ? sizeof task - 1 : 1, rlen = shaped ? sizeof result - 1 : 1;

    if (strcmp(mode, "pin") == 0) {
        cpu_set_t set;
        CPU_ZERO(&set);
        CPU_SET(0, &set);
        sched_setaffinity(0, sizeof set, &set);
    }
    if (pipe(down) || pipe(up) || pipe(err) || pipe(sig1) || pipe(sig2)) { perror("pipe"); return 1; }
    pid_t pid = fork();
    if (pid < 0) { perror("fork"); return 1; }
    if (pid == 0) {
        close(down[1]); close(up[0]);
        while (read(down[0], buf, shaped ? 8192 : 1) > 0)
            if (write(up[1], result, rlen) != (ssize_t)rlen) break;
        _exit(0);
    }
    close(down[0]); close(up[1]);
    struct pollfd fds[4] = {{sig1[0], POLLIN, 0}, {sig2[0], POLLIN, 0}, {up[0], POLLIN, 0}, {err[0], POLLIN, 0}};
    double t0 = 0;
    for (long i = -1000; i < n; i++) {  /* 1000 warm-up turns */
        if (i == 0) t0 = now();
        if (write(down[1], task, tlen) != (ssize_t)tlen) return 1;
        if (shaped && poll(fds, 4, -1) < 1) return 1;
        if (read(up[0], buf, shaped ? sizeof buf : 1) < 1) return 1;
        if (reap) { int st; waitpid(pid, &st, WNOHANG); }
    }
    double t1 = now();
    close(down[1]);
    waitpid(pid, NULL, 0);
    printf("%.1f\n", (t1 - t0) / n * 1e9);
    return 0;
}
