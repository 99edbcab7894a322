package registry

import (
	"testing"

	"sockmesh/internal/testenv"
)

func TestMain(m *testing.M) {
	testenv.Main(m, map[string]testenv.Helper{
		"rename-dial": helperRenameDial,
	})
}
