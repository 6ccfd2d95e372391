module github.com/mntv2/mntv2

go 1.26.8

require (
	github.com/checkpoint-restore/go-criu/v7 v7.2.0
	golang.org/x/sys v0.50.0
	google.golang.org/protobuf v1.36.12
)

require github.com/moby/sys/mountinfo v0.7.3 // indirect
