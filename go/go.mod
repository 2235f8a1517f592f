module github.com/cudann/cudann/go

go 1.19
