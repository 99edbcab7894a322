package main

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"runtime"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// runBackend is the backend role: args are "tcp:ADDR" (echo every byte
// back until the client closes or resets the connection: RR and CRR) and
// "udp:ADDR" (echo every datagram). It prints "ready" once
// every socket listens and runs until killed.
func runBackend(args []string) error {
	for _, a := range args {
		proto, addr, _ := strings.Cut(a, ":")
		switch proto {
		case "tcp":
			ln, err := net.Listen("tcp", addr)
			if err != nil {
				return fmt.Errorf("listen backend: %w", err)
			}
			go serveEcho(ln)
		case "udp":
			fd, err := udpSocket(addr)
			if err != nil {
				return err
			}
			go serveUDPEcho(fd)
		default:
			return fmt.Errorf("backend: %q is not tcp:ADDR or udp:ADDR", a)
		}
	}
	return readyAndWait()
}

func readyAndWait() error {
	fmt.Println("ready")
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	<-sig
	return nil
}

// serveEcho echoes on every accepted connection, a goroutine each: the
// one-byte echo of netperf's TCP_RR and TCP_CRR servers. The server never
// closes first: a CRR client resets the connection, and a reset racing a
// server's FIN is dropped by connection tracking as out of window, leaving
// the server's socket to stall a later connect from the same port.
func serveEcho(ln net.Listener) {
	acceptEach(ln, func(c net.Conn) {
		buf := make([]byte, 64)
		for {
			n, err := c.Read(buf)
			if err != nil {
				return
			}
			if _, err := c.Write(buf[:n]); err != nil {
				return
			}
		}
	})
}

// acceptEach serves every connection ln accepts with serve, in a
// goroutine of its own, and closes it after.
func acceptEach(ln net.Listener, serve func(net.Conn)) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			serve(c)
		}()
	}
}

func udpSocket(addr string) (int, error) {
	ua, err := net.ResolveUDPAddr("udp4", addr)
	if err != nil {
		return -1, fmt.Errorf("parse udp backend %s: %w", addr, err)
	}
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("socket: %w", err)
	}
	sa := &unix.SockaddrInet4{Port: ua.Port}
	copy(sa.Addr[:], ua.IP.To4())
	if err := unix.Bind(fd, sa); err != nil {
		return -1, fmt.Errorf("bind udp backend %s: %w", addr, err)
	}
	return fd, nil
}

// serveUDPEcho echoes datagrams with blocking system calls on a thread of
// its own: no poller in the way of a round trip.
func serveUDPEcho(fd int) {
	runtime.LockOSThread()
	buf := make([]byte, 2048)
	for {
		n, from, err := unix.Recvfrom(fd, buf, 0)
		if err != nil {
			if errors.Is(err, unix.EINTR) {
				continue
			}
			return
		}
		_ = unix.Sendto(fd, buf[:n], 0, from)
	}
}

// runGoProxy is the plain userspace proxy: args are "LISTEN=UPSTREAM"
// pairs; each accepted connection gets its own upstream connection and two
// io.Copy goroutines, the proxy everyone writes first.
func runGoProxy(args []string) error {
	for _, a := range args {
		listen, upstream, ok := strings.Cut(a, "=")
		if !ok {
			return fmt.Errorf("goproxy: %q is not LISTEN=UPSTREAM", a)
		}
		ln, err := net.Listen("tcp", listen)
		if err != nil {
			return fmt.Errorf("listen proxy: %w", err)
		}
		go proxy(ln, upstream)
	}
	return readyAndWait()
}

func proxy(ln net.Listener, upstream string) {
	acceptEach(ln, func(c net.Conn) {
		u, err := net.Dial("tcp", upstream)
		if err != nil {
			return
		}
		defer u.Close()
		done := make(chan struct{})
		go func() {
			io.Copy(u, c)
			u.(*net.TCPConn).CloseWrite()
			close(done)
		}()
		io.Copy(c, u)
		c.(*net.TCPConn).CloseWrite()
		<-done
	})
}
