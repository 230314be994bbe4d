// Command etcd is the upstream etcd server (go.etcd.io/etcd/server/v3/etcdmain),
// built here because the etcd repository's own main package lives in its root
// module, which is not published for the release Kubernetes pins.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
