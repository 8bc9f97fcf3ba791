package procstat

import (
	"os"
	"testing"
	"time"
)

func TestParseStat(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want time.Duration
		err  bool
	}{
		{"plain", "1234 (nats-server) S 1 2 3 4 5 6 7 8 9 10 250 75 0 0 20 0", 3250 * time.Millisecond, false},
		{"name with spaces and parens", "7 (a (b) c) R 1 2 3 4 5 6 7 8 9 10 1 2 0", 30 * time.Millisecond, false},
		{"no name", "7 a R 1 2", 0, true},
		{"too short", "7 (x) R 1 2 3", 0, true},
		{"not a number", "7 (x) S 1 2 3 4 5 6 7 8 9 10 u 2 0", 0, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseStat([]byte(tt.in))
			if (err != nil) != tt.err {
				t.Fatalf("err = %v, want error: %v", err, tt.err)
			}
			if got != tt.want {
				t.Errorf("got %v, want %v", got, tt.want)
			}
		})
	}
}

func TestParseStatus(t *testing.T) {
	in := "Name:\tgateway\nVmPeak:\t  999 kB\nVmHWM:\t   40960 kB\nVmRSS:\t   20480 kB\nThreads:\t7"
	rss, peak := ParseStatus([]byte(in))
	if rss != 20480<<10 || peak != 40960<<10 {
		t.Errorf("rss %d peak %d", rss, peak)
	}
	if rss, peak := ParseStatus([]byte("Name:\tzombie\n")); rss != 0 || peak != 0 {
		t.Errorf("zombie: rss %d peak %d", rss, peak)
	}
}

func TestReadSelf(t *testing.T) {
	s, err := Read(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if s.RSS <= 0 || s.PeakRSS < s.RSS {
		t.Errorf("implausible sample of this process: %+v", s)
	}
	if _, err := Read(-1); err == nil {
		t.Error("no error for a process that cannot exist")
	}
}
