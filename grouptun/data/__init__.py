"""The data path's shell: the TUN and UDP devices (their offloads behind ``devices``' Protocols),
the event-loop plane that moves runs between them and the session, and the interface setup."""
