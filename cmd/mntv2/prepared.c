// The action script's half of a prepared rewrite (plugin/prepared.go):
// at pre-restore, before the Go runtime starts, it checks that the images
// are those the rewrite was prepared from and makes the on-disk state of
// plugin's commit, so that CRIU goes on at once.
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include "prepared.h"

// Names of plugin/prepared.go and plugin/rewrite.go.
#define PREPARED "mntv2-prepared"
#define PREPARED_PREFIX "mntv2-prepared-"
#define PREPARED_HEADER "mntv2-prepared 1"
#define MANIFEST "mntv2-manifest.json"
#define BACKUP_PREFIX "mntv2-orig-"
#define TEMP_PREFIX ".mntv2-tmp-"
#define EXTRA "mntv2-dump.json"
#define TOKEN_MARK "\"token\": \"@MNTV2-TOKEN@\""
#define OWNER_MARK "\"owner\": -1,"
#define CONFIG_FILE "/etc/mntv2/criu-hook.conf"
#define MAX_FILE (16 << 20)
#define MAX_SWAPS 256

struct stamp {
	unsigned long long ino;
	long long size, sec, nsec;
	const char *name;
	int seen;
};

// stamped is plugin.stamped: whether name is one of the images.
static int stamped(const char *n) {
	size_t l = strlen(n);

	if (strncmp(n, "mntv2-", 6) == 0 || strncmp(n, ".mntv2-", 7) == 0)
		return strcmp(n, EXTRA) == 0;
	return l > 4 && strcmp(n + l - 4, ".img") == 0;
}

// read_all reads name of dirfd (or a path when dirfd is AT_FDCWD) into a
// NUL-terminated buffer; NULL if it is missing or too big.
static char *read_all(int dirfd, const char *name, size_t *len) {
	struct stat st;
	char *buf;
	size_t n = 0;
	int fd = openat(dirfd, name, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);

	if (fd < 0)
		return NULL;
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || st.st_size > MAX_FILE || (buf = malloc(st.st_size + 1)) == NULL) {
		close(fd);
		return NULL;
	}
	while (n < (size_t)st.st_size) {
		ssize_t r = read(fd, buf + n, st.st_size - n);

		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			break;
		n += r;
	}
	close(fd);
	if (n != (size_t)st.st_size) {
		free(buf);
		return NULL;
	}
	buf[n] = '\0';
	*len = n;
	return buf;
}

// setting is the value of key as plugin.LoadSettings finds it: the
// environment's, else the config file's; "" if neither has it. It returns
// -1 for a config file plugin would refuse (then Go runs, and says why).
static int setting(const char *key, char *out, size_t size) {
	const char *v = getenv(key);
	size_t len, kl = strlen(key);
	char *buf, *line, *next;

	out[0] = '\0';
	if (v != NULL && *v != '\0') {
		snprintf(out, size, "%s", v);
		return 0;
	}
	buf = read_all(AT_FDCWD, CONFIG_FILE, &len);
	if (buf == NULL)
		return access(CONFIG_FILE, F_OK) == 0 ? -1 : 0;
	for (line = buf; line != NULL && *line != '\0'; line = next) {
		char *eq, *k, *end;

		next = strchr(line, '\n');
		if (next != NULL)
			*next++ = '\0';
		while (*line == ' ' || *line == '\t' || *line == '\r')
			line++;
		if (*line == '\0' || *line == '#')
			continue;
		eq = strchr(line, '=');
		if (eq == NULL) {
			free(buf);
			return -1;
		}
		for (end = eq; end > line && (end[-1] == ' ' || end[-1] == '\t');)
			end--;
		k = line;
		if ((size_t)(end - k) != kl || strncmp(k, key, kl) != 0)
			continue;
		v = eq + 1;
		while (*v == ' ' || *v == '\t')
			v++;
		snprintf(out, size, "%s", v);
		for (len = strlen(out); len > 0 && (out[len - 1] == ' ' || out[len - 1] == '\t' || out[len - 1] == '\r');)
			out[--len] = '\0';
	}
	free(buf);
	return 0;
}

// eligible says whether the settings are those a prepared rewrite is made
// for: the hook on, reduce mode, no test pause, MNTV2_PREPARED not 0.
static int eligible(void) {
	char v[64];

	if (setting("MNTV2_DISABLE", v, sizeof(v)) < 0 || strcmp(v, "1") == 0)
		return 0;
	if (setting("MNTV2_REDUCE", v, sizeof(v)) < 0 || (v[0] != '\0' && strcmp(v, "1") != 0))
		return 0;
	if (setting("MNTV2_PREPARED", v, sizeof(v)) < 0 || strcmp(v, "0") == 0)
		return 0;
	if (setting("MNTV2_TEST_PAUSE", v, sizeof(v)) < 0 || v[0] != '\0')
		return 0;
	// Settings the Go side could refuse: it would run without the
	// rewrite's manifest read. Only the plain ones here.
	if (setting("MNTV2_FAIL_SYSCALL", v, sizeof(v)) < 0 || v[strspn(v, "0123456789")] != '\0')
		return 0;
	if (setting("MNTV2_LOG_LEVEL", v, sizeof(v)) < 0 ||
	    (v[0] != '\0' && strcasecmp(v, "debug") != 0 && strcasecmp(v, "info") != 0 && strcasecmp(v, "warn") != 0 &&
	     strcasecmp(v, "error") != 0))
		return 0;
	return 1;
}

// unchanged says whether the images of dirfd are exactly those stamped,
// with no rewrite (manifest, second names, temporary files) in place.
static int unchanged(int dirfd, struct stamp *stamps, int n) {
	int d = fcntl(dirfd, F_DUPFD_CLOEXEC, 0), seen = 0, i, ok = 1;
	struct dirent *e;
	DIR *dir;

	if (d < 0)
		return 0;
	dir = fdopendir(d);
	if (dir == NULL) {
		close(d);
		return 0;
	}
	while (ok && (e = readdir(dir)) != NULL) {
		struct stat st;

		if (strcmp(e->d_name, MANIFEST) == 0 || strncmp(e->d_name, BACKUP_PREFIX, strlen(BACKUP_PREFIX)) == 0 ||
		    strncmp(e->d_name, TEMP_PREFIX, strlen(TEMP_PREFIX)) == 0) {
			ok = 0; // a rewrite is in place: the Go path recovers it first
			break;
		}
		if (!stamped(e->d_name))
			continue;
		for (i = 0; i < n && strcmp(stamps[i].name, e->d_name) != 0; i++)
			;
		if (i == n || stamps[i].seen || fstatat(dirfd, e->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0 || !S_ISREG(st.st_mode) ||
		    (unsigned long long)st.st_ino != stamps[i].ino || (long long)st.st_size != stamps[i].size ||
		    (long long)st.st_mtim.tv_sec != stamps[i].sec || (long long)st.st_mtim.tv_nsec != stamps[i].nsec) {
			ok = 0;
			break;
		}
		stamps[i].seen = 1;
		seen++;
	}
	closedir(dir);
	return ok && seen == n;
}

// write_manifest writes data as MANIFEST of dirfd; its name is made
// durable by the caller's fsync of the directory, its bytes need not be
// (see plugin's commit).
static int write_manifest(int dirfd, const char *data, size_t len) {
	const char *tmp = TEMP_PREFIX "c-" MANIFEST;
	size_t n = 0;
	int fd = openat(dirfd, tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);

	if (fd < 0)
		return -1;
	while (n < len) {
		ssize_t r = write(fd, data + n, len - n);

		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			break;
		n += r;
	}
	if (n != len) {
		close(fd);
		unlinkat(dirfd, tmp, 0);
		return -1;
	}
	close(fd);
	if (renameat(dirfd, tmp, dirfd, MANIFEST) < 0) {
		unlinkat(dirfd, tmp, 0);
		return -1;
	}
	return 0;
}

// fill_manifest is the prepared manifest text with its marks replaced by
// token and owner; NULL if it does not have each mark once.
static char *fill_manifest(const char *text, const char *token, int owner, size_t *len) {
	const char *t = strstr(text, TOKEN_MARK), *o = strstr(text, OWNER_MARK);
	char tok[64], own[64], *out;
	size_t tl, ol;

	if (t == NULL || o == NULL || strstr(t + 1, TOKEN_MARK) != NULL || strstr(o + 1, OWNER_MARK) != NULL)
		return NULL;
	tl = (size_t)snprintf(tok, sizeof(tok), "\"token\": \"%s\"", token);
	ol = (size_t)snprintf(own, sizeof(own), "\"owner\": %d,", owner);
	*len = strlen(text) - strlen(TOKEN_MARK) - strlen(OWNER_MARK) + tl + ol;
	out = malloc(*len + 1);
	if (out == NULL)
		return NULL;
	out[0] = '\0';
	if (t < o) {
		strncat(out, text, t - text);
		strcat(out, tok);
		strncat(out, t + strlen(TOKEN_MARK), o - t - strlen(TOKEN_MARK));
		strcat(out, own);
		strcat(out, o + strlen(OWNER_MARK));
	} else {
		strncat(out, text, o - text);
		strcat(out, own);
		strncat(out, o + strlen(OWNER_MARK), t - o - strlen(OWNER_MARK));
		strcat(out, tok);
		strcat(out, t + strlen(TOKEN_MARK));
	}
	return out;
}

// cut is for tests (MNTV2_TEST_PREPARED_CUT=N): the N-th change to the
// directory fails, as a crash there would leave it.
static int cut(void) {
	static int n;
	const char *v = getenv("MNTV2_TEST_PREPARED_CUT");

	return v != NULL && atoi(v) == ++n;
}

int mntv2_swap_prepared(const char *dirpath, int owner, char token[33]) {
	struct stamp *stamps = NULL;
	const char *swaps[MAX_SWAPS], *manifest = NULL;
	char *plan = NULL, *filled = NULL, *line, *next;
	int nstamps = 0, nswaps = 0, cap = 0, i, dirfd, ret = MNTV2_PREPARED_NONE;
	unsigned char rnd[16];
	size_t len, mlen;
	char name[4096];

	if (dirpath == NULL || !eligible())
		return MNTV2_PREPARED_NONE;
	dirfd = open(dirpath, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dirfd < 0)
		return MNTV2_PREPARED_NONE;
	plan = read_all(dirfd, PREPARED, &len);
	if (plan == NULL || strlen(plan) != len)
		goto out;
	line = plan;
	next = strchr(line, '\n');
	if (next == NULL)
		goto out;
	*next++ = '\0';
	if (strcmp(line, PREPARED_HEADER) != 0)
		goto out;
	for (line = next; line != NULL && *line != '\0'; line = next) {
		next = strchr(line, '\n');
		if (next != NULL)
			*next++ = '\0';
		if (strcmp(line, "manifest") == 0) {
			manifest = next;
			break;
		}
		if (strncmp(line, "stamp ", 6) == 0) {
			struct stamp st = {0};
			int off = 0;

			if (sscanf(line + 6, "%llu %lld %lld %lld %n", &st.ino, &st.size, &st.sec, &st.nsec, &off) != 4 || off == 0 ||
			    line[6 + off] == '\0')
				goto out;
			st.name = line + 6 + off;
			if (nstamps == cap) {
				struct stamp *more = realloc(stamps, (cap = cap ? 2 * cap : 64) * sizeof(*stamps));

				if (more == NULL)
					goto out;
				stamps = more;
			}
			stamps[nstamps++] = st;
		} else if (strncmp(line, "swap ", 5) == 0 && nswaps < MAX_SWAPS) {
			swaps[nswaps++] = line + 5;
		} else {
			goto out;
		}
	}
	if (manifest == NULL || nswaps == 0 || !unchanged(dirfd, stamps, nstamps))
		goto out;
	for (i = 0; i < nswaps; i++) {
		struct stat st;
		int j;

		for (j = 0; j < nstamps && strcmp(stamps[j].name, swaps[i]) != 0; j++)
			;
		if (j == nstamps || strchr(swaps[i], '/') != NULL ||
		    snprintf(name, sizeof(name), PREPARED_PREFIX "%s", swaps[i]) >= (int)sizeof(name) ||
		    fstatat(dirfd, name, &st, AT_SYMLINK_NOFOLLOW) < 0 || !S_ISREG(st.st_mode))
			goto out;
	}
	if (getrandom(rnd, sizeof(rnd), 0) != sizeof(rnd))
		goto out;
	for (i = 0; i < 16; i++)
		snprintf(token + 2 * i, 3, "%02x", rnd[i]);
	filled = fill_manifest(manifest, token, owner, &mlen);
	if (filled == NULL)
		goto out;
	// From the manifest on, what is done is plugin.Recover's to undo.
	if (cut() || write_manifest(dirfd, filled, mlen) < 0)
		goto out;
	ret = MNTV2_PREPARED_UNDO;
	for (i = 0; i < nswaps; i++) {
		snprintf(name, sizeof(name), BACKUP_PREFIX "%s", swaps[i]);
		if (cut() || linkat(dirfd, swaps[i], dirfd, name, 0) < 0)
			goto out;
	}
	if (cut() || fsync(dirfd) < 0)
		goto out;
	for (i = 0; i < nswaps; i++) {
		char tmp[4096];

		snprintf(name, sizeof(name), PREPARED_PREFIX "%s", swaps[i]);
		snprintf(tmp, sizeof(tmp), TEMP_PREFIX "c-%s", swaps[i]);
		if (cut() || linkat(dirfd, name, dirfd, tmp, 0) < 0)
			goto out;
		if (cut() || renameat(dirfd, tmp, dirfd, swaps[i]) < 0) {
			unlinkat(dirfd, tmp, 0);
			goto out;
		}
	}
	ret = MNTV2_PREPARED_SWAPPED;
out:
	free(filled);
	free(stamps);
	free(plan);
	close(dirfd);
	return ret;
}
