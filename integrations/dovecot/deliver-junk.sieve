# mailsift at delivery (sieve_before in 90-mailsift.conf, LMTP or LDA): into Junk go
#  - the copy `mailsift milter` marked for this recipient only: it changed the
#    recipient bob@example.org into bob+junk@example.org (an address extension, after
#    bob's own spam report; Dovecot's recipient_delimiter is "+" by default);
#  - a message the milter found spam for everyone (it adds X-Mailsift-Verdict, and
#    removes any copy of that header the sender wrote).
# Anything else goes on to the user's own Sieve script, if any.
require ["envelope", "subaddress", "fileinto", "mailbox"];

if anyof (envelope :detail "to" "junk",
          header :is "X-Mailsift-Verdict" "spam") {
  fileinto :create "Junk";
  stop;
}
