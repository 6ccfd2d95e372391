# A tmpfs mounted strictatime. mntv2 7ae472d (CRIU + hook, both CRIU modes): post-restore
# verify aborted the restore: "flags: expected rw,strictatime, found rw" (mountinfo never prints
# strictatime; the images' MS_STRICTATIME was compared with none). Identical from main 58d23b3.
mkdir /tmp/a
mount -t tmpfs -o strictatime a /tmp/a
