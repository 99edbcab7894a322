package dnsstub

import (
	"fmt"
	"testing"
)

func BenchmarkBuildZoneTmp(b *testing.B) {
	var svcs []Service
	for i := range 10000 {
		svcs = append(svcs, Service{Name: fmt.Sprintf("svc-%d", i), VIPs: addrs(fmt.Sprintf("198.18.%d.%d", i>>8, i&255), fmt.Sprintf("fd6d:6573:6800::%x", i)), Ports: []Port{{Name: "http", Number: 80, Proto: "tcp"}}})
	}
	z := zoneConfig{origin: "mesh.internal.", reverse: testRanges, ttl: 300, negativeTTL: 5}
	b.ReportAllocs()
	for b.Loop() {
		buildZone(z, svcs)
	}
}
