/*
 * wakefloor: the machine's floor for a futex wake-up between two host
 * processes, with none of zcfabric's code in the path. It is the baseline
 * scripts/bench-wake.sh -F prints next to zsend -> zcount --latency.
 *
 *   wakefloor [-r RATE] [-n PACKETS] [--pin]
 *
 * What it does: the parent (the sender) and a forked child (the receiver)
 * share one anonymous MAP_SHARED page holding a 32-bit sequence word, a
 * 32-bit "sleeping" word and a ring of 256 timestamps. At RATE packets a
 * second (default 1000; absolute CLOCK_MONOTONIC deadlines with
 * clock_nanosleep) the sender reads CLOCK_REALTIME (the clock zsend stamps
 * with), stores it in the ring slot of the next sequence number, publishes
 * that number, then calls FUTEX_WAKE on the sequence word only if the
 * receiver said it sleeps (the need_wakeup pattern of the queue format:
 * a busy receiver costs the sender no system call).
 *
 * The receiver, finding no new sequence number, stores 1 in the sleeping
 * word, re-checks the sequence word, and FUTEX_WAITs on it (no
 * FUTEX_PRIVATE_FLAG: the word is shared across processes). Both sides use
 * SEQ_CST stores and loads on the two words, so of "sender stores seq,
 * loads sleeping" and "receiver stores sleeping, loads seq" at least one
 * sees the other's store: no lost wake-up. On waking it reads
 * CLOCK_REALTIME and records (now - timestamp) for every packet published
 * since it last looked, as zcount --latency does for a burst. After
 * PACKETS packets it prints the median, 99th percentile (the element at
 * index q*(n-1) of the sorted delays, zcount's rule) and maximum in
 * microseconds, in the form bench-wake.sh prints for zcount:
 *
 *   "latency_p50_us":12.3 "latency_p99_us":45.6 "latency_max_us":78.9 (floor: ...)
 *
 * --pin puts the sender on CPU 0 and the receiver on CPU 1
 * (sched_setaffinity), as bench-wake.sh -P does with taskset for zsend
 * and zcount.
 *
 * Build: gcc -O2 -Wall -Wextra -o wakefloor wakefloor.c (Linux only).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <getopt.h>
#include <linux/futex.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define RING 256 /* timestamps in flight; 256 * 8 bytes fits the page */

struct shared {
	uint32_t seq;      /* last published packet, 1-based; the futex word */
	uint32_t sleeping; /* 1: the receiver announced it is about to sleep */
	uint32_t ready;    /* 1: the receiver is running */
	uint32_t pad;
	int64_t ts[RING];  /* CLOCK_REALTIME ns of packet s, at ts[s % RING] */
};

static void die(const char *what)
{
	fprintf(stderr, "wakefloor: %s: %s\n", what, strerror(errno));
	exit(1);
}

static int64_t now_ns(clockid_t c)
{
	struct timespec t;

	if (clock_gettime(c, &t) != 0)
		die("clock_gettime");
	return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

static long futex(uint32_t *w, int op, uint32_t val, const struct timespec *timeout)
{
	return syscall(SYS_futex, w, op, val, timeout, NULL, 0);
}

static void pin(int cpu)
{
	cpu_set_t set;

	CPU_ZERO(&set);
	CPU_SET(cpu, &set);
	if (sched_setaffinity(0, sizeof(set), &set) != 0) {
		fprintf(stderr, "wakefloor: pin to CPU %d: %s\n", cpu, strerror(errno));
		exit(1);
	}
}

static int cmp64(const void *a, const void *b)
{
	int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;

	return (x > y) - (x < y);
}

static double pct_us(const int64_t *d, long n, double q)
{
	return (double)d[(long)(q * (double)(n - 1))] / 1e3;
}

/* receiver runs in the child: it waits for n packets and prints the line. */
static int receiver(struct shared *sh, long n, double rate)
{
	int64_t *delays = malloc((size_t)n * sizeof(*delays));
	long got = 0, lost = 0;
	uint32_t last = 0;

	if (delays == NULL)
		die("malloc");
	__atomic_store_n(&sh->ready, 1, __ATOMIC_SEQ_CST);
	while ((long)last < n) {
		uint32_t cur = __atomic_load_n(&sh->seq, __ATOMIC_SEQ_CST);

		if (cur == last) {
			/* Announce, re-check, sleep. */
			__atomic_store_n(&sh->sleeping, 1, __ATOMIC_SEQ_CST);
			if (__atomic_load_n(&sh->seq, __ATOMIC_SEQ_CST) == last &&
			    futex(&sh->seq, FUTEX_WAIT, last, NULL) != 0 &&
			    errno != EAGAIN && errno != EINTR)
				die("futex wait");
			__atomic_store_n(&sh->sleeping, 0, __ATOMIC_SEQ_CST);
			continue;
		}
		int64_t now = now_ns(CLOCK_REALTIME);
		for (uint32_t s = last + 1; s != cur + 1; s++) {
			int64_t ts = __atomic_load_n(&sh->ts[s % RING], __ATOMIC_SEQ_CST);

			/* The sender overwrites this slot with packet s + RING
			 * after publishing s + RING - 1: if seq, loaded after
			 * the slot, is still below that, the slot was s's. */
			if (__atomic_load_n(&sh->seq, __ATOMIC_SEQ_CST) - s >= RING - 1 || now < ts) {
				lost++;
				continue;
			}
			delays[got++] = now - ts;
		}
		last = cur;
	}
	if (lost > 0)
		fprintf(stderr, "wakefloor: %ld of %ld packets not timed (receiver a ring behind)\n", lost, n);
	if (got == 0) {
		fprintf(stderr, "wakefloor: no packet timed\n");
		return 1;
	}
	qsort(delays, (size_t)got, sizeof(*delays), cmp64);
	if (printf("\"latency_p50_us\":%.3f \"latency_p99_us\":%.3f \"latency_max_us\":%.3f "
		   "(floor: futex wake between two processes, no zcfabric code, rate %g/s, %ld packets)\n",
		   pct_us(delays, got, 0.5), pct_us(delays, got, 0.99), pct_us(delays, got, 1),
		   rate, n) < 0 || fflush(stdout) != 0)
		die("write stdout");
	free(delays);
	return 0;
}

/* sender runs in the parent: n packets at rate per second. */
static void sender(struct shared *sh, long n, double rate)
{
	struct timespec t;
	int64_t start;

	/* Wait (up to 5 s) for the receiver to run. */
	for (int i = 0; !__atomic_load_n(&sh->ready, __ATOMIC_SEQ_CST); i++) {
		struct timespec ms = {0, 1000000};

		if (i == 5000) {
			fprintf(stderr, "wakefloor: the receiver did not start in 5 s\n");
			exit(1);
		}
		if (nanosleep(&ms, NULL) != 0 && errno != EINTR)
			die("nanosleep");
	}
	start = now_ns(CLOCK_MONOTONIC) + 10000000; /* let the receiver fall asleep */
	for (long i = 1; i <= n; i++) {
		int64_t due = start + (int64_t)((double)(i - 1) * 1e9 / rate);
		int err;

		t.tv_sec = due / 1000000000;
		t.tv_nsec = due % 1000000000;
		while ((err = clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &t, NULL)) == EINTR)
			;
		if (err != 0) {
			errno = err;
			die("clock_nanosleep");
		}
		__atomic_store_n(&sh->ts[i % RING], now_ns(CLOCK_REALTIME), __ATOMIC_SEQ_CST);
		__atomic_store_n(&sh->seq, (uint32_t)i, __ATOMIC_SEQ_CST);
		if (__atomic_load_n(&sh->sleeping, __ATOMIC_SEQ_CST) &&
		    futex(&sh->seq, FUTEX_WAKE, 1, NULL) < 0)
			die("futex wake");
	}
}

static void usage(void)
{
	fprintf(stderr, "usage: wakefloor [-r RATE] [-n PACKETS] [--pin]\n");
	exit(2);
}

int main(int argc, char **argv)
{
	static const struct option longopts[] = {
		{"pin", no_argument, NULL, 'p'},
		{NULL, 0, NULL, 0},
	};
	double rate = 1000, nf = 5000;
	int dopin = 0, o, status;
	char *end;
	struct shared *sh;
	pid_t child, parent = getpid();
	long n;

	while ((o = getopt_long(argc, argv, "r:n:", longopts, NULL)) != -1) {
		switch (o) {
		case 'r':
			rate = strtod(optarg, &end);
			if (*end != '\0' || !(rate > 0 && rate <= 1e9))
				usage();
			break;
		case 'n':
			nf = strtod(optarg, &end); /* 3000 or 3e3, as zsend takes */
			if (*end != '\0' || !(nf >= 1 && nf <= 1e9) || nf != (double)(long)nf)
				usage();
			break;
		case 'p':
			dopin = 1;
			break;
		default:
			usage();
		}
	}
	if (optind != argc)
		usage();
	n = (long)nf;

	sh = mmap(NULL, sizeof(*sh), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (sh == MAP_FAILED)
		die("mmap shared page");
	memset(sh, 0, sizeof(*sh)); /* fault the page in before timing */
	if (fflush(stdout) != 0)
		die("flush stdout");

	child = fork();
	if (child < 0)
		die("fork");
	if (child == 0) {
		/* Die with the sender rather than sleep forever. */
		if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0)
			die("prctl PR_SET_PDEATHSIG");
		if (getppid() != parent)
			exit(1); /* the sender died before prctl */
		if (dopin)
			pin(1);
		exit(receiver(sh, n, rate));
	}
	if (dopin)
		pin(0);
	sender(sh, n, rate);
	if (waitpid(child, &status, 0) != child)
		die("waitpid");
	if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
		fprintf(stderr, "wakefloor: receiver failed (status %#x)\n", status);
		return 1;
	}
	if (munmap(sh, sizeof(*sh)) != 0)
		die("munmap");
	return 0;
}
