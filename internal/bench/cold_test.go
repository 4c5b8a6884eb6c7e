package main

import "testing"

// TestFasterRounds: a round counts only when the first server took less
// time than the second in that same round; a tie is not faster, and
// rounds beyond the shorter series are not compared.
func TestFasterRounds(t *testing.T) {
	for _, c := range []struct {
		a, b []float64
		want int
	}{
		{[]float64{1.0, 1.2, 0.9}, []float64{1.1, 1.1, 1.0}, 2},
		{[]float64{1.0, 1.0}, []float64{1.0, 1.0}, 0},
		{[]float64{0.5, 0.5, 0.5}, []float64{1.0}, 1},
		{nil, []float64{1.0}, 0},
	} {
		if got := fasterRounds(c.a, c.b); got != c.want {
			t.Errorf("fasterRounds(%v, %v) = %d, want %d", c.a, c.b, got, c.want)
		}
	}
}
