module cudann_test

go 1.19
