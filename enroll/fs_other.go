//go:build !unix

package enroll

import "os"

// Without flock the daemon and the command line must not change the state
// directory at the same time.
func flock(*os.File, bool) error { return nil }
func funlock(*os.File) error     { return nil }

func matchOwner(*os.File, string) error { return nil }
