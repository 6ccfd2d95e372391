// Package images reads and writes the CRIU image files that describe mounts:
// inventory, pstree, ids-<pid>, fs-<pid>, mountpoints-<mntns> and the
// tmpfs-dev-<dev>.tar.gz content images.
//
// Images are untrusted input. The package frames records itself (a u32
// little-endian length followed by a protobuf message), checks both magics of
// every image, caps the size of each record and of each file, and reports a
// truncated or oversized record with the file name and byte offset. Only the
// framed bytes reach proto.Unmarshal, with go-criu v7's generated types.
//
// go-criu's types stay inside this package: callers get plain Go values
// (Mount, Task, TaskIDs, Inventory). Every record keeps the bytes it was read
// from, so reading and writing back an unchanged image gives identical bytes.
//
// Do not use this package to decode images other than the ones listed above:
// it knows only the magics mntv2 needs.
package images
