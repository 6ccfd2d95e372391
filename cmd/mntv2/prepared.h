// plugin/prepared.go describes a prepared rewrite; prepared.c swaps it in.
#ifndef MNTV2_PREPARED_H
#define MNTV2_PREPARED_H

// What mntv2_swap_prepared did.
enum {
	MNTV2_PREPARED_NONE = 0,    // nothing: the Go path rewrites
	MNTV2_PREPARED_SWAPPED = 1, // the rewrite is in place, named token
	MNTV2_PREPARED_UNDO = 2,    // cut off half-way: plugin.Recover must undo it
};

// mntv2_swap_prepared puts the rewrite prepared in the images directory
// dirpath in place for the CRIU process owner, if the settings are reduce
// mode and the images are those it was prepared from; token receives its
// name (32 hex digits).
int mntv2_swap_prepared(const char *dirpath, int owner, char token[33]);

#endif
