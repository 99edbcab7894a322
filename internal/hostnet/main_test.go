package hostnet

import (
	"testing"

	"sockmesh/internal/testenv"
)

func TestMain(m *testing.M) {
	testenv.Main(m, nil)
}
