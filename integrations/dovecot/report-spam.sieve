# mailsift: a message the user moves, copies or saves into Junk is their spam report.
#
# Run by IMAPSieve (imapsieve_mailbox1_* in 90-mailsift.conf) as the user. The message
# goes to `mailsift-report spam --user ADDRESS` in sieve_pipe_bin_dir; ADDRESS is the
# IMAP login, which must be the user's mail address (the one the gateway scored for).
require ["vnd.dovecot.pipe", "copy", "imapsieve", "environment", "variables"];

if environment :matches "imap.user" "*" {
  set "username" "${1}";
}

pipe :copy "mailsift-report" ["spam", "--user", "${username}"];
